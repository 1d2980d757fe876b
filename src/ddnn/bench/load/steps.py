"""One step of the benchmark as a row: the open-loop (K, R) step with its verdict, and the
closed-loop capacity step; each a dataclass until its JSON object."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from ddnn.bench.load.drive import CpuShares, RssRange, Target, drive
from ddnn.bench.load.generator import ClosedLoopPart, OpenLoopPart
from ddnn.errors import DdnnError
from ddnn.runtime.metric_names import BATCH_COMPUTE_MS, QUEUE_MS, REQUESTS_RECEIVED, exposed
from ddnn.stats import percentile

HELD_SEND_FRACTION = 0.95  # a step offered less than this share of its rate: generator-bound
LATENCY_KEYS = ("p50_ms", "p99_ms", "max_ms", "send_lag_p99_ms")  # inf / nan -> null in JSON


def _json(step: Any) -> dict[str, Any]:
    """A step as its JSON object: the CPU shares spliced in where the `cpu` field stands."""
    flat = asdict(step)
    return {k: v for key, value in flat.items() for k, v in _splice(key, value)}


def _splice(key: str, value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if key == "cpu" else [(key, value)]


def _rank(values: Sequence[float], q: float) -> float:
    """Nearest rank: an unanswered request (inf) sorts last and shows as inf."""
    return percentile(values, q, nearest_rank=True)


@dataclass(frozen=True)
class LoadStep:
    """One open-loop (K, R) step. Every scheduled request is exactly one of ok, shed, errors or
    lost; p50 / p99 are over the replies (late ones too) and the unanswered requests (as inf)."""

    devices: int
    rate_per_device: float
    offered_per_s: float
    achieved_send_per_s: float
    scheduled: int
    sent: int
    ok: int
    shed: int
    errors: int
    send_errors: int
    lost: int
    late: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float
    generators: int
    mean_batch: float
    # time inside the server: a long latency with a short queue means the backlog sat
    # before the workers (broker, socket, the server's network thread)
    server_queue_ms_mean: float | None
    server_batch_compute_ms_mean: float | None
    cpu: CpuShares
    server_rss_mb: RssRange
    server_received: float
    server_counters: dict[str, float]
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        out = _json(self)
        for key in LATENCY_KEYS:  # JSON has no inf
            out[key] = out[key] if math.isfinite(out[key]) else None
        return out


@dataclass(frozen=True)
class ClosedLoopStep:
    """Capacity with closed-loop devices: answers per second, latency, time in the server."""

    devices: int
    in_flight: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    server_p50_ms: float  # queue + compute, as the replies say
    mean_batch: float
    # unreadable or unmatched replies too: a device whose request got one stops sending
    errors: int
    lost: int
    cpu: CpuShares
    requests_per_server_cpu_s: float

    def to_json(self) -> dict[str, Any]:
        return _json(self)


def run_step(
    target: Target,
    devices: int,
    rate: float,
    seconds: float,
    deadline_ms: float,
    generators: int,
) -> LoadStep:
    """One (K, R) step: start the generators, send, collect, measure the server, judge."""
    run = drive(
        target, devices, generators, f"gen-{devices}x{rate:g}", seconds + deadline_ms / 1000 + 60,
        rate=rate, seconds=seconds, deadline_ms=deadline_ms,
    )  # fmt: skip
    parts = cast(list[OpenLoopPart], run.parts)
    counts = run.counts()
    latency = [x for p in parts for x in p.latency_ms]
    lag = [x for p in parts for x in p.lag_ms]
    send_window = max(seconds, max(p.last_send_s for p in parts))
    server = {k: v for k, v in run.delta.items() if k.endswith("_total") or "errors_" in k}
    step = LoadStep(
        devices=devices,
        rate_per_device=rate,
        offered_per_s=devices * rate,
        achieved_send_per_s=counts["sent"] / send_window,
        scheduled=sum(p.scheduled for p in parts),
        sent=counts["sent"],
        ok=counts["ok"],
        shed=counts["shed"],
        errors=counts["error"],
        send_errors=counts["send_errors"],
        lost=counts["lost"],
        late=counts["late"],
        p50_ms=_rank(latency, 50),
        p99_ms=_rank(latency, 99),
        max_ms=_rank(latency, 100),
        send_lag_p99_ms=_rank(lag, 99),
        generators=len(parts),
        mean_batch=run.mean_batch,
        server_queue_ms_mean=run.mean(QUEUE_MS),
        server_batch_compute_ms_mean=run.mean(BATCH_COMPUTE_MS),
        cpu=run.cpu,
        server_rss_mb=run.rss,
        server_received=server.get(exposed(REQUESTS_RECEIVED), 0.0),
        server_counters=server,
    )
    return replace(step, verdict=verdict(step, deadline_ms))


def verdict(step: LoadStep, deadline_ms: float) -> str:
    """held: the rate was offered and every request answered in time, none shed.
    generator-bound: the senders could not offer the rate and one of them used a whole core, so
    the server's limit was not what was measured. overloaded: anything else (the server, or the
    machine it shares with the broker and the generators, could not keep up)."""
    short = step.achieved_send_per_s < HELD_SEND_FRACTION * step.offered_per_s
    if short and step.cpu.generator_cpu_pct_max >= 90:
        return "generator-bound"
    failed = step.lost or step.shed or step.errors or step.p99_ms > deadline_ms
    return "overloaded" if failed or short else "held"


def closed_loop_step(
    target: Target, devices: int, window: int, seconds: float, generators: int
) -> dict[str, Any]:
    """Capacity with `devices` closed-loop devices keeping `window` requests in flight each:
    answers per second, latency, time in the server and who used the CPU (a `ClosedLoopStep`
    as JSON)."""
    run = drive(
        target, devices, generators, f"closed-{devices}x{window}", seconds + 60,
        rate=0.0, seconds=seconds, deadline_ms=10_000.0, window=window,
    )  # fmt: skip
    parts = cast(list[ClosedLoopPart], run.parts)
    latency = [x for p in parts for x in p.latency_ms]
    inside = [x for p in parts for x in p.server_ms]
    if not latency:
        raise DdnnError(f"no request was answered in {seconds:g} s with {devices} device(s)")
    counts = run.counts()
    rate = sum(p.answered_in_window for p in parts) / seconds
    server_cores = (run.cpu.server_cpu_pct or 0.0) / 100
    return ClosedLoopStep(
        devices=devices,
        in_flight=devices * window,
        requests_per_s=rate,
        p50_ms=_rank(latency, 50),
        p95_ms=_rank(latency, 95),
        server_p50_ms=_rank(inside, 50),
        mean_batch=run.mean_batch,
        errors=counts["errors"] + counts["send_errors"] + counts["unmatched"],
        lost=counts["lost"],
        cpu=run.cpu,
        requests_per_server_cpu_s=rate / max(server_cores, 1e-9),
    ).to_json()
