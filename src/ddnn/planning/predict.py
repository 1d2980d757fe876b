"""The planner's arithmetic: from a profile, a link and a threshold to the times, bytes and
accuracy a deployment would see. Pure functions on numbers, so every formula has a unit test.

A sample that exits on the device costs T_device; one that is offloaded costs T_device + the
link (bytes at its rate, its delay both ways) + the server path, one round trip through a real
server with no link (planning/overhead.py), which holds the broker, both clients and the server
process's work and layers, so nothing is counted twice. The path is split as a run records it:
T_server is the queue and compute time the server's reply reports, T_comm the link plus the rest
of the round trip. The p95 of T_total is the p95 of that mixture (weights: the local-exit
fraction and the rest), never a sum of the parts' p95s, which would count the slow tail of every
part at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ddnn.errors import DdnnError
from ddnn.planning.records import RunProfile, ServerPath, ThresholdRow, WireBytes
from ddnn.runtime.protocol import DEVICE_SERVER, SERVER_ONLY

SPLIT = DEVICE_SERVER
MAX_PAIRS = 250_000  # device x server time pairs kept for an offloaded sample's distribution


@dataclass(frozen=True)
class Stat:
    mean: float
    p95: float


@dataclass(frozen=True)
class Prediction:
    """One design at one threshold on one device and link."""

    run: str
    mode: str  # SPLIT or SERVER_ONLY
    threshold: float | None  # None: server-only (the final exit answers)
    local_exit_fraction: float
    t_device_ms: Stat
    t_comm_ms: Stat
    t_server_ms: Stat
    t_total_ms: Stat
    frame_bytes_per_sample: float  # request ddnn frames sent upward
    mqtt_bytes_per_sample: float  # the MQTT PUBLISH packets carrying them
    wire_bytes_per_sample: float  # request and reply with TCP/IP headers, both directions
    accuracy: float
    device_ram_bytes: int | None
    device_flash_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value with at least `q` (0..1) of the total weight at or below it (the
    inverted CDF, so the answer is one of the values)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    index = int(np.searchsorted(cum, q * cum[-1] - 1e-12, side="left"))
    return float(values[order][min(index, len(values) - 1)])


def mixture_quantile(parts: Sequence[tuple[float, np.ndarray]], q: float) -> float:
    """Quantile of a mixture: each part (weight, samples) is an empirical distribution chosen
    with probability `weight`."""
    kept = [(w, np.asarray(v, dtype=np.float64)) for w, v in parts if w > 0 and len(v)]
    if not kept:
        return 0.0
    values = np.concatenate([v for _, v in kept])
    weights = np.concatenate([np.full(len(v), w / len(v)) for w, v in kept])
    return weighted_quantile(values, weights, q)


def offloaded_times(device: np.ndarray, path: np.ndarray, link: float) -> np.ndarray:
    """Every device time with every server-path round trip (independent draws) plus the link's
    time: the distribution of an offloaded sample's total. Thinned evenly past MAX_PAIRS."""
    totals = (device[:, None] + path[None, :]).ravel() + link
    if len(totals) > MAX_PAIRS:
        totals = np.sort(totals)[:: int(np.ceil(len(totals) / MAX_PAIRS))]
    return totals


def link_ms(wire: WireBytes, rate_mbit: float, delay_ms: float) -> float:
    """What the link adds to one offload: request and reply bytes on the wire at its rate, plus
    the one-way delay twice (there and back)."""
    return wire.round_trip_wire * 8 / (rate_mbit * 1e6) * 1e3 + 2 * delay_ms


def _path(path: ServerPath, link: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(round trips without the measured link's arithmetic, T_server, T_comm on `link`) per
    measured request: the link it was measured through is swapped for `link`."""
    trip = np.asarray(path.round_trip.samples_ms, dtype=np.float64) - path.link_ms
    server = np.asarray(path.server.samples_ms, dtype=np.float64)
    if not len(trip) or len(trip) != len(server):
        raise DdnnError("the profile has no server path; measure it again with --remeasure")
    return trip, server, link + trip - server


def predict_row(
    profile: RunProfile,
    row: ThresholdRow | None,
    rate_mbit: float,
    delay_ms: float,
) -> Prediction:
    """Prediction at one threshold row; `row` None is the server-only deployment."""
    if row is None or profile.split_wire is None:
        return _server_only(profile, rate_mbit, delay_ms)
    local = row.local_exit_fraction
    off = 1.0 - local
    device = np.asarray(profile.device.samples_ms)
    link = link_ms(profile.split_wire, rate_mbit, delay_ms)
    trip, server, comm = _path(profile.split_path, link)
    zero = np.zeros(1)
    total = offloaded_times(device, trip, link)
    return Prediction(
        run=profile.run,
        mode=SPLIT,
        threshold=row.threshold,
        local_exit_fraction=local,
        t_device_ms=Stat(float(device.mean()), float(np.percentile(device, 95))),
        t_comm_ms=Stat(
            off * float(comm.mean()), mixture_quantile([(local, zero), (off, comm)], 0.95)
        ),
        t_server_ms=Stat(
            off * float(server.mean()), mixture_quantile([(local, zero), (off, server)], 0.95)
        ),
        t_total_ms=Stat(
            float(device.mean()) + off * (link + float(trip.mean())),
            mixture_quantile([(local, device), (off, total)], 0.95),
        ),
        frame_bytes_per_sample=off * profile.split_wire.request_frame,
        mqtt_bytes_per_sample=off * profile.split_wire.request_mqtt,
        wire_bytes_per_sample=off * profile.split_wire.round_trip_wire,
        accuracy=row.accuracy,
        device_ram_bytes=profile.device_ram_bytes,
        device_flash_bytes=profile.device_flash_bytes,
    )


def _stat(values: np.ndarray, plus: float = 0.0) -> Stat:
    return Stat(float(values.mean()) + plus, float(np.percentile(values, 95)) + plus)


def _server_only(profile: RunProfile, rate_mbit: float, delay_ms: float) -> Prediction:
    """Every sample's raw view goes to the server, which runs the whole model."""
    wire = profile.server_only_wire
    link = link_ms(wire, rate_mbit, delay_ms)
    trip, server, comm = _path(profile.server_only_path, link)
    return Prediction(
        run=profile.run,
        mode=SERVER_ONLY,
        threshold=None,
        local_exit_fraction=0.0,
        t_device_ms=Stat(0.0, 0.0),
        t_comm_ms=_stat(comm),
        t_server_ms=_stat(server),
        t_total_ms=_stat(trip, link),
        frame_bytes_per_sample=float(wire.request_frame),
        mqtt_bytes_per_sample=float(wire.request_mqtt),
        wire_bytes_per_sample=float(wire.round_trip_wire),
        accuracy=profile.cloud_only_accuracy,
        device_ram_bytes=None,
        device_flash_bytes=None,
    )


def nearest_row(profile: RunProfile, threshold: float) -> ThresholdRow:
    """The profiled threshold closest to `threshold` (the profile holds a grid of them)."""
    return min(profile.thresholds, key=lambda r: abs(r.threshold - threshold))


def predict(
    profile: RunProfile, link: Any, threshold: float | None, mode: str = SPLIT
) -> Prediction:
    """The prediction for `profile` on `link` (anything with rate_mbit and delay_ms, e.g. a
    LinkProfile) at `threshold` (the nearest profiled one); mode SERVER_ONLY ignores it."""
    row = None if mode == SERVER_ONLY or threshold is None else nearest_row(profile, threshold)
    return predict_row(profile, row, link.rate_mbit, link.delay_ms)


def predict_all(profile: RunProfile, rate_mbit: float, delay_ms: float) -> list[Prediction]:
    """Every profiled threshold, then the server-only deployment of the same model."""
    rows = [predict_row(profile, r, rate_mbit, delay_ms) for r in profile.thresholds]
    if profile.split_wire is None:  # no device section: server-only is all there is
        rows = []
    return [*rows, predict_row(profile, None, rate_mbit, delay_ms)]
