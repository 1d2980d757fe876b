"""Device and link profiles: TOML files (shipped ones under `profiles/`, or the user's own) read
into frozen dataclasses.

A device's speed is `gflops`, its single-core float32 throughput on the reference workload of
`calibrate.py`; the quota that emulates it is that figure over the host's own, measured on the
spot. A link's `delay_ms` is one way: the round trip of a small message is twice that.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ddnn.config import from_dict
from ddnn.errors import DdnnError

SHIPPED = Path(__file__).parent / "profiles"
DEVICES, LINKS = "devices", "links"

P = TypeVar("P")


@dataclass(frozen=True)
class DeviceProfile:
    """What an emulated device is: its speed on the reference workload, cores and RAM."""

    name: str
    description: str
    gflops: float  # single-core float32 GEMM throughput on the reference workload
    cores: int
    ram_mb: int
    source: str  # where the figures come from
    path: str = ""  # the file it was read from

    def __post_init__(self) -> None:
        _positive(self, "gflops", self.gflops > 0)
        _positive(self, "cores", self.cores >= 1)
        _positive(self, "ram_mb", self.ram_mb >= 1)


@dataclass(frozen=True)
class LinkProfile:
    """What an emulated link is: one rate for each direction and a one-way delay."""

    name: str
    description: str
    rate_mbit: float  # each direction
    delay_ms: float  # ONE-WAY; a round trip is twice this
    source: str
    path: str = ""

    def __post_init__(self) -> None:
        _positive(self, "rate_mbit", self.rate_mbit > 0)
        if self.delay_ms < 0:
            raise DdnnError(f"{self.path or self.name}: delay_ms must be 0 or more")


def _positive(profile: Any, field: str, ok: bool) -> None:
    if not ok:
        where = profile.path or profile.name
        raise DdnnError(f"{where}: {field} must be positive, got {getattr(profile, field)!r}")


def device_profile_names() -> list[str]:
    return _names(DEVICES)


def link_profile_names() -> list[str]:
    return _names(LINKS)


def load_device_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name (`pi3`) or a TOML file of the user's."""
    return _load(DeviceProfile, DEVICES, name_or_path)


def load_link_profile(name_or_path: str | Path) -> LinkProfile:
    """A shipped profile by name (`wifi`) or a TOML file of the user's."""
    return _load(LinkProfile, LINKS, name_or_path)


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in (SHIPPED / kind).glob("*.toml"))


def _load(cls: type[P], kind: str, name_or_path: str | Path) -> P:
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or "/" in text or path.is_file()):
        path = SHIPPED / kind / f"{text}.toml"
        if not path.is_file():
            flag = "--device-profile" if kind == DEVICES else "--link"
            raise DdnnError(
                f"unknown {kind[:-1]} profile {text!r}; known: {', '.join(_names(kind))} "
                f"(or pass {flag} a TOML file of your own)"
            )
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DdnnError(f"cannot read profile {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DdnnError(f"{path}: not valid TOML: {exc}") from exc
    data = {"name": path.stem, **data, "path": str(path)}
    required = [
        f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.init
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise DdnnError(
            f"{path}: missing field {missing[0]!r} (a {kind[:-1]} profile needs "
            f"{', '.join(n for n in required if n != 'name')})"
        )
    return from_dict(cls, data, where=str(path))
