"""What a profile holds: measured times, bytes on the wire and exit behaviour of one run on one
device and link profile. Plain dataclasses that round-trip through JSON (the stored profile)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ddnn.config import from_dict, to_dict
from ddnn.errors import DdnnError

# 2: device times dilated; 3: MQTT round trips, best-speed calibration; 4: the real server's
# path (planning/overhead.py) instead of an MQTT echo
FORMAT = "ddnn-profile/6"


@dataclass(frozen=True)
class Timing:
    """Per-sample times (ms) of one piece of work, one value per timed repeat. The samples are
    kept (not just their summary) because a p95 of a mixture needs the whole distribution."""

    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms)) if self.samples_ms else 0.0

    @property
    def p95(self) -> float:
        return float(np.percentile(self.samples_ms, 95)) if self.samples_ms else 0.0

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms)) if self.samples_ms else 0.0

    def summary(self) -> dict[str, float]:
        return {"median": self.median, "p95": self.p95, "mean": self.mean}


@dataclass(frozen=True)
class LayerTime:
    """One layer (or a section's exit head, or its input fusion) timed where it would run."""

    section: str
    layer: str  # "0: bconv 32", "exit", "fuse"; "C: whole section" (the C device, one call)
    where: str  # "device" (dilated to the profile's speed) or "server"
    time: Timing


@dataclass(frozen=True)
class WireBytes:
    """One request and its reply as they cross the link. frame: the ddnn frame (runtime/codec);
    mqtt: the MQTT v5 QoS-1 PUBLISH packet carrying it (exact, runtime/transport); wire: plus
    TCP/IPv4 headers, derived (see planning/wire.py), not measured."""

    request_frame: int
    request_mqtt: int
    request_wire: int
    reply_frame: int
    reply_mqtt: int
    reply_wire: int

    @property
    def round_trip_wire(self) -> int:
        return self.request_wire + self.reply_wire


@dataclass(frozen=True)
class ServerPath:
    """One offload through a real `ddnn serve` and the emulated link (planning/overhead.py), per
    request: `round_trip` from the device encoding its request to having the reply decoded, and
    `server`, the queue and compute time the reply reports (what a run records as T_server;
    the rest of the round trip is what it records as T_comm). `link_ms`: the link's arithmetic
    (bytes at its rate, its delay twice) inside each round trip, which a prediction for another
    rate or delay swaps for its own."""

    round_trip: Timing = Timing(())
    server: Timing = Timing(())
    link_ms: float = 0.0


@dataclass(frozen=True)
class ThresholdRow:
    """Exit behaviour at one threshold (the same at every early exit) on the validation split."""

    threshold: float
    local_exit_fraction: float  # samples answered on the device: never sent
    accuracy: float  # overall: each sample answered where it exited
    payload_bytes_per_sample: float  # evaluate's count: features (and scores) sent upward


@dataclass(frozen=True)
class RunProfile:
    """A run measured on one device profile and link (see docs/planning.md)."""

    run: str
    model: str
    model_id: str  # hashes of the stored parts: a retrained run is measured again
    host: str
    device_profile: dict[str, Any]
    link_profile: dict[str, Any]
    calibration: dict[str, Any]
    slowdown: float  # host speed / device speed: device times are host times x this
    repeats: int
    layers: tuple[LayerTime, ...]
    device: Timing  # per sample: the whole device section (body and exit), dilated
    server: Timing  # per sample: every upper section's layers on the server, back to back
    server_only: Timing  # per sample: the whole model's layers on the server, back to back
    exit_bytes: dict[str, int]  # payload bytes one sample carries past each cut (section name)
    split_wire: WireBytes | None  # device+server: the offload request; None without a device
    server_only_wire: WireBytes  # server-only: the raw view
    thresholds: tuple[ThresholdRow, ...]
    cloud_only_accuracy: float
    validation_samples: int
    device_ram_bytes: int | None  # static RAM of the C export; None: not exportable
    device_flash_bytes: int | None  # const weights of the C export
    measured_at: str = ""
    # what ran the device section: "python" (its torch layers, as `ddnn device`) or "c" (its
    # generated C in the harness, as the C agent)
    device_impl: str = "python"
    # one offload through the real server, no link (planning/overhead.py): what T_comm (beyond
    # the link) and T_server are predicted from; `server` and `server_only` are for display
    split_path: ServerPath = ServerPath()  # the device's features (empty without a device)
    server_only_path: ServerPath = ServerPath()  # raw views to the whole model

    def to_dict(self) -> dict[str, Any]:
        doc = {"format": FORMAT} | to_dict(self)
        doc["summary"] = {
            "device_ms": self.device.summary(),
            "server_ms": self.server.summary(),
            "server_only_ms": self.server_only.summary(),
            "split_path_ms": self.split_path.round_trip.summary(),
            "server_only_path_ms": self.server_only_path.round_trip.summary(),
            "sections_ms": [
                {"section": s, "where": w, **t.summary()} for s, w, t in self.section_times()
            ],
        }
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "profile") -> RunProfile:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DdnnError(f"{where}: not a {FORMAT} document; measure again with --remeasure")
        known = {f.name for f in fields(cls)}
        return from_dict(cls, {k: v for k, v in doc.items() if k in known}, where)

    def section_times(self) -> list[tuple[str, str, Timing]]:
        """(section, where, per-sample time): each section's layers summed repeat by repeat."""
        groups: dict[tuple[str, str], list[tuple[float, ...]]] = {}
        for t in self.layers:
            groups.setdefault((t.section, t.where), []).append(t.time.samples_ms)
        return [
            (section, where, Timing(tuple(float(v) for v in np.sum(samples, axis=0))))
            for (section, where), samples in groups.items()
        ]

    def layer_rows(self) -> list[tuple[str, str, str, float, float]]:
        """(section, layer, where, median ms, p95 ms) for the layer table."""
        return [(t.section, t.layer, t.where, t.time.median, t.time.p95) for t in self.layers]
