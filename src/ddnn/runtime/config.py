"""Typed, frozen configs of the runtime tiers: the only home of their defaults.

A field that is a command-line flag carries the flag and its help text in its metadata, so
`add_flags` puts a config's fields on a parser, `from_args` builds the config back from the
parsed namespace and `to_argv` writes the flags that start a tier process with that config.
The runner, the benchmarks and the tests build their `ddnn ...` command lines with `to_argv`,
so a renamed flag or a changed default cannot drift between them. Values are checked where the
config is built, whoever builds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ddnn.emulation.profiles import load_device_profile, load_link_profile
from ddnn.errors import DdnnError
from ddnn.names import IDENTIFIER, IDENTIFIER_RULE
from ddnn.runtime.protocol import (
    DEVICE_SERVER,
    EDGE_IDENTITY,
    FOLLOW_MODES,
    MODES,
    SERVER_GROUP,
    default_device_id,
)
from ddnn.runtime.transport import DEFAULT_MQTT_CLIENT, mqtt_client_names

DEVICE_IMPLS = ("python", "c")  # what runs a device in `ddnn run`: `ddnn device` or `ddnn agent`
ALL_MODES = "both"  # `ddnn run --mode both`: each of MODES in turn
DEFAULT_DEADLINE_MS = 2000.0  # a device's wait for its answer; the edge's wait for the server

_FLAG, _HELP, _CHOICES, _UNSET = "flag", "help", "choices", "unset"

C = TypeVar("C")


def flag(
    default: Any,
    help_text: str | None = None,
    *,
    name: str | None = None,
    choices: tuple[str, ...] | None = None,
    unset: bool = False,
) -> Any:
    """A config field that is also a command-line flag (`--field-name` unless `name` says
    otherwise). `unset`: the parser leaves it None when not given, so the command can tell
    "not given" from the default (an identity then comes from the access file)."""
    meta = {_FLAG: name, _HELP: help_text, _CHOICES: choices, _UNSET: unset}
    return field(default=default, metadata=meta)


def _option(f: dataclasses.Field[Any]) -> str:
    return f.metadata[_FLAG] or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field[Any]) -> str:
    return _option(f).lstrip("-").replace("-", "_")


def _flagged(cls: type, names: tuple[str, ...] = ()) -> list[dataclasses.Field[Any]]:
    found = [f for f in dataclasses.fields(cls) if _FLAG in f.metadata]
    return [f for f in found if f.name in names] if names else found


def _split(text: str) -> tuple[str, ...] | None:
    """`cam1,cam2` -> ("cam1", "cam2"); an empty list is not given (None)."""
    return tuple(part for part in text.split(",") if part) or None


def _split_floats(text: str) -> tuple[float, ...] | None:
    """`0.3,0.6` -> (0.3, 0.6)."""
    parts = _split(text)
    try:
        return None if parts is None else tuple(float(p) for p in parts)
    except ValueError:
        what = f"{text!r} is not a comma-separated list of numbers"
        raise argparse.ArgumentTypeError(what) from None


def _parser_type(hint: Any) -> Any:
    """int | None -> int; tuple[str, ...] or tuple[float, ...] -> comma-separated."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return _split_floats if typing.get_args(hint)[0] is float else _split
    return hint


def add_flags(parser: argparse.ArgumentParser, cls: type, *names: str) -> None:
    """Add the flags of config class `cls` (only `names`, in the class's order, when given)."""
    hints = typing.get_type_hints(cls)
    for f in _flagged(cls, names):
        meta = f.metadata
        if isinstance(f.default, bool):  # a switch: it says the opposite of the default
            parser.add_argument(_option(f), action="store_true", help=meta[_HELP])
            continue
        parser.add_argument(
            _option(f),
            type=_parser_type(hints[f.name]),
            default=None if meta[_UNSET] else f.default,
            choices=meta[_CHOICES],
            help=meta[_HELP],
        )


def from_args(cls: type[C], ns: argparse.Namespace, **overrides: Any) -> C:
    """The config of class `cls` from parsed flags; a flag left None keeps the default, and so
    does one the command does not offer (`ddnn agent` takes a subset of `ddnn device`'s)."""
    values: dict[str, Any] = {}
    for f in _flagged(cls):
        given = getattr(ns, _dest(f), None)
        if isinstance(f.default, bool):
            values[f.name] = (not f.default) if given else f.default
        elif given is not None:
            values[f.name] = given
    return cls(**{**values, **overrides})


def to_argv(config: Any) -> list[str]:
    """The flags that give a `ddnn` command this config: `["--workers", "2", ...]`."""
    argv: list[str] = []
    for f in _flagged(type(config)):
        value = getattr(config, f.name)
        if isinstance(f.default, bool):
            argv += [_option(f)] if value != f.default else []
        elif value is not None:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            argv += [_option(f), text]
    return argv


_ID = f"an identifier ({IDENTIFIER_RULE})"
_IDS = f"identifiers ({IDENTIFIER_RULE})"


def _is_id(value: object) -> bool:
    """Ids name MQTT topic levels: an id with '#', '+' or '/' would widen or break them."""
    return isinstance(value, str) and IDENTIFIER.fullmatch(value) is not None


def _check_thresholds(values: tuple[float, ...] | None) -> None:
    """--threshold in [0, 1]; how many the model needs is checked where it is loaded
    (`executor.exit_thresholds`)."""
    if values is None:
        return
    from ddnn.evaluate.policy import check_threshold  # here: it loads torch, --help need not

    if not values:
        raise DdnnError("--threshold needs a value, or one per early exit (comma-separated)")
    for t in values:
        check_threshold(t, "--threshold")


_THRESHOLDS_HELP = (
    "exit threshold(s) overriding the calibrated ones: one for every early exit, or one per "
    "early exit, comma-separated (0: always offload, 1: exit unless uniform)"
)


_FOLLOW_HELP = (
    "follow live rollouts (ddnn deploy): fetch new versions from a server (mqtt) or read them "
    "from the folder the server announces (path); default: stay on this version"
)


def _require(config: Any, name: str, ok: bool, what: str) -> None:
    """Raise a DdnnError naming the field, its flag and the value when `ok` is false."""
    if ok:
        return
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    where = f" ({_option(f)})" if _FLAG in f.metadata else ""
    raise DdnnError(f"{name}{where} must be {what}, got {getattr(config, name)!r}")


@dataclass(frozen=True, kw_only=True)
class ConnectionConfig:
    """How a tier process speaks MQTT (`--broker` / `--auth` say to whom)."""

    mqtt_client: str = flag(
        DEFAULT_MQTT_CLIENT,
        "MQTT client library: paho (pure Python) or libmosquitto (C, Debian libmosquitto1: "
        "less CPU per message; see docs/runtime.md)",
        choices=mqtt_client_names(),
    )

    def __post_init__(self) -> None:
        valid = mqtt_client_names()
        _require(self, "mqtt_client", self.mqtt_client in valid, f"one of {', '.join(valid)}")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """`ddnn serve`: the worker pool and its batching."""

    workers: int = flag(2, "worker threads that batch and run requests")
    max_batch: int = flag(32, "most requests run as one batch")
    max_wait_ms: float = flag(
        0.0, "how long a worker waits for more requests to batch (0: batch what is queued)"
    )
    queue_limit: int = flag(1024, "beyond it requests are shed")
    inline: bool = flag(
        True,
        "always hand requests to the workers (default: a request that finds the server idle "
        "is answered on the network thread, saving two thread hand-offs)",
        name="--no-inline",
    )
    http_port: int = flag(0, "metrics/health port (0: free)")
    unload_after_s: float = flag(
        30.0, "after a deploy, unload the old version once no request named it for this long"
    )
    group: str = SERVER_GROUP  # shared-subscription group; a secure broker's access file names it
    collect: str | None = flag(
        None,
        "keep the answered requests (features or raw input, the answers, version, time) in this "
        "folder: training data for `ddnn collect` and `ddnn train --distill` (default: off)",
    )
    collect_max_mb: float = flag(100.0, "with --collect: stop collecting at this many MB")
    collect_max_count: int = flag(100_000, "with --collect: stop collecting at this many requests")

    def __post_init__(self) -> None:
        _require(self, "collect_max_mb", self.collect_max_mb > 0, "positive")
        _require(self, "collect_max_count", self.collect_max_count >= 1, "at least 1")
        _require(self, "workers", self.workers >= 1, "at least 1")
        _require(self, "max_batch", self.max_batch >= 1, "at least 1")
        _require(self, "max_wait_ms", self.max_wait_ms >= 0, "0 or more")
        _require(self, "queue_limit", self.queue_limit >= 1, "at least 1")
        _require(self, "http_port", 0 <= self.http_port <= 65535, "a port in 0..65535")
        _require(self, "unload_after_s", self.unload_after_s >= 0, "0 or more")
        _require(self, "group", bool(self.group), "a non-empty name")


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """`ddnn edge`: whose reports it fuses and how long it waits for them and the server."""

    device_ids: tuple[str, ...] | None = flag(
        None, "comma-separated device ids (default dev0..devN-1)", name="--devices"
    )
    identity: str = flag(
        EDGE_IDENTITY,
        "the edge's identity, its reply topic (default: the access file's, or edge)",
        name="--id",
        unset=True,
    )
    frame_deadline_ms: float = flag(200.0, "how long a frame waits for every device's report")
    upstream_deadline_ms: float = flag(
        DEFAULT_DEADLINE_MS, "how long a forward waits for the server"
    )
    thresholds: tuple[float, ...] | None = flag(None, _THRESHOLDS_HELP, name="--threshold")
    follow: str | None = flag(None, _FOLLOW_HELP, choices=FOLLOW_MODES)
    switch_after_frames: int = flag(
        20, "following: the devices switch this many frames after the newest the edge has seen"
    )

    def __post_init__(self) -> None:
        _check_thresholds(self.thresholds)
        follow = self.follow
        _require(self, "follow", follow is None or follow in FOLLOW_MODES, "mqtt or path")
        _require(self, "switch_after_frames", self.switch_after_frames >= 1, "at least 1")
        ids = self.device_ids
        _require(self, "device_ids", ids is None or (bool(ids) and all(map(_is_id, ids))), _IDS)
        _require(self, "identity", _is_id(self.identity), _ID)
        _require(self, "frame_deadline_ms", self.frame_deadline_ms > 0, "positive")
        _require(self, "upstream_deadline_ms", self.upstream_deadline_ms > 0, "positive")


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One end device: who it is, which view it computes, how it offloads."""

    device_id: str = flag(
        default_device_id(0),
        "device id: topics, replies (default: the access file's, or dev0)",
        name="--id",
        unset=True,
    )
    index: int = flag(0, "which device section / view")
    engine: str = flag("torch", "torch, onnx or c")
    mode: str = flag(
        DEVICE_SERVER,
        "server-only: every sample goes upstream, nothing runs here",
        choices=MODES,
    )
    deadline_ms: float = flag(
        DEFAULT_DEADLINE_MS, "how long a sample waits upstream before the local answer is used"
    )
    thresholds: tuple[float, ...] | None = flag(None, _THRESHOLDS_HELP, name="--threshold")
    latency_budget_ms: float | None = flag(
        None,
        "raise the local exit threshold while offloaded samples' p95 latency exceeds this, "
        "back toward the calibrated one when they recover (default: fixed threshold)",
    )
    follow: str | None = flag(None, _FOLLOW_HELP, choices=FOLLOW_MODES)

    def __post_init__(self) -> None:
        _check_thresholds(self.thresholds)
        budget = self.latency_budget_ms
        _require(self, "latency_budget_ms", budget is None or budget > 0, "positive")
        follow = self.follow
        _require(self, "follow", follow is None or follow in FOLLOW_MODES, "mqtt or path")
        _require(self, "device_id", _is_id(self.device_id), _ID)
        _require(self, "index", self.index >= 0, "0 or more")
        _require(self, "mode", self.mode in MODES, f"one of {', '.join(MODES)}")
        _require(self, "deadline_ms", self.deadline_ms > 0, "positive")


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """What `ddnn device` streams through its client: which test samples, how fast, where the
    records go."""

    samples: int = flag(100, "first K test samples")
    offset: int = flag(0, "start at this sample")
    stride: int = flag(1, "then take every stride-th")
    rate: float = flag(0.0, "samples per second (0: back to back)")
    records: str | None = flag(None, "write one JSON line per sample here")

    def __post_init__(self) -> None:
        _require(self, "samples", self.samples >= 1, "at least 1")
        _require(self, "offset", self.offset >= 0, "0 or more")
        _require(self, "stride", self.stride >= 1, "at least 1")
        _require(self, "rate", self.rate >= 0, "0 or more")


@dataclass(frozen=True, kw_only=True)
class DeploymentConfig:
    """`ddnn run`: the whole deployment on this machine."""

    devices: int | None = flag(None, "default: the model's device count")
    samples: int = flag(200, "first K test samples")
    rate: float = flag(StreamConfig.rate, "samples per second per device")
    mode: str = flag(ALL_MODES, "which configurations to run", choices=(*MODES, ALL_MODES))
    workers: int = flag(ServerConfig.workers, "server worker threads")
    broker: str | None = flag(None, "mqtt[s]://host:port of a running broker (default: start one)")
    engine: str = flag(DeviceConfig.engine, "the devices' engine: torch, onnx or c")
    device_impl: str = flag(
        DEVICE_IMPLS[0],
        "python: `ddnn device` processes; c: the generated C agent (`ddnn agent`, libmosquitto)",
        choices=DEVICE_IMPLS,
    )
    deadline_ms: float = flag(DeviceConfig.deadline_ms, "the devices' deadline")
    secure: bool = flag(
        False, "its own broker with passwords, ACL and TLS; each process its own identity"
    )
    thresholds: tuple[float, ...] | None = flag(None, _THRESHOLDS_HELP, name="--threshold")
    latency_budget_ms: float | None = flag(None, "the devices' latency budget (see ddnn device)")
    device_profile: str | None = flag(
        None, "run each device under this device's CPU speed: a profile name (pi3, pi4, ...) "
        "or a TOML file; needs root and a cgroup cpu controller (docs/emulation.md)",
    )  # fmt: skip
    link: str | None = flag(
        None, "each device's traffic over this link: a profile name (wifi, lte, ...) or a TOML "
        "file; needs root (network namespaces, tc)",
    )  # fmt: skip
    mqtt_client: str = flag(
        ConnectionConfig.mqtt_client,
        "every tier's MQTT client library (see ddnn serve)",
        choices=mqtt_client_names(),
    )

    def __post_init__(self) -> None:
        _check_thresholds(self.thresholds)
        if self.device_profile is not None:
            load_device_profile(self.device_profile)  # an unknown name lists the known ones
        if self.link is not None:
            load_link_profile(self.link)
            if self.secure:
                raise DdnnError(
                    "--secure with --link is not supported: the devices reach the broker "
                    "through a relay whose address the broker's TLS certificate does not name"
                )
        budget = self.latency_budget_ms
        _require(self, "latency_budget_ms", budget is None or budget > 0, "positive")
        ConnectionConfig(mqtt_client=self.mqtt_client)  # checks it
        _require(self, "devices", self.devices is None or self.devices >= 1, "at least 1")
        _require(self, "samples", self.samples >= 1, "at least 1")
        _require(self, "rate", self.rate >= 0, "0 or more")
        valid = (*MODES, ALL_MODES)
        _require(self, "mode", self.mode in valid, f"one of {', '.join(valid)}")
        _require(self, "workers", self.workers >= 1, "at least 1")
        _require(self, "deadline_ms", self.deadline_ms > 0, "positive")
        _require(self, "device_impl", self.device_impl in DEVICE_IMPLS, " or ".join(DEVICE_IMPLS))
        if self.secure and self.broker:
            raise DdnnError("--secure starts its own broker; drop --broker (or secure that broker)")

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.mode == ALL_MODES else (self.mode,)

    @property
    def emulated(self) -> bool:
        return self.device_profile is not None or self.link is not None
