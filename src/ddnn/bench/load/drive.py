"""Driving the servers for one step: split K devices over generator processes, start them
together, and measure the servers (counters, CPU, memory) while they send."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddnn.bench.load.generator import (
    ClosedLoopPart,
    GeneratorConfig,
    GeneratorProcess,
    OpenLoopPart,
)
from ddnn.bench.load.measure import cpu_seconds, drain, machine_cpu, rss_mb, server_counters
from ddnn.runtime.metric_names import BATCHES, REPLIES, MetricName, exposed

GENERATOR_START_S = 0.5  # head start between "go" and the first scheduled send


@dataclass(frozen=True)
class Target:
    """The servers under load and where the generators reach them."""

    url: str
    model: str
    version: int
    shape: tuple[int, ...]
    server_pids: tuple[int, ...]  # `ddnn serve` processes sharing the requests
    broker_pid: int | None  # None: an external broker, not measured
    metrics_ports: tuple[int, ...]
    work: Path  # generator configs, results and logs

    def rss_mb(self) -> float:
        """Resident memory of all server processes now, MB."""
        return sum(rss_mb(pid) for pid in self.server_pids)

    def cpu_s(self) -> tuple[float, float | None]:
        """(servers, broker) CPU seconds so far."""
        broker = None if self.broker_pid is None else cpu_seconds(self.broker_pid)
        return sum(cpu_seconds(pid) for pid in self.server_pids), broker


@dataclass(frozen=True)
class CpuShares:
    """CPU while sending, in % of one core (the machine has os.cpu_count() * 100): who used the
    cores, and how much went to processes outside the benchmark (`other`)."""

    server_cpu_pct: float
    broker_cpu_pct: float | None  # None: an external broker
    generator_cpu_pct: float
    generator_cpu_pct_max: float  # one generator near 100: it was the bound
    machine_cpu_pct: float
    other_cpu_pct: float


@dataclass(frozen=True)
class RssRange:
    """The servers' resident memory at the start and end of the sending window, MB."""

    start: float
    end: float


@dataclass(frozen=True)
class Drive:
    """What one step's generators returned and what the servers did while they sent."""

    parts: list[OpenLoopPart | ClosedLoopPart]  # one per generator process
    delta: dict[str, float]  # the servers' counters over the step, answered backlog included
    cpu: CpuShares  # over the sending window
    rss: RssRange

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for p in self.parts:
            total.update(p.counts)
        return total

    @property
    def mean_batch(self) -> float:
        replies = self.delta.get(exposed(REPLIES), 0.0)
        return replies / max(self.delta.get(exposed(BATCHES), 0.0), 1.0)

    def mean(self, name: MetricName) -> float | None:
        """Mean of a server histogram over this step; None when it has no samples."""
        n = self.delta.get(exposed(name, "_count"), 0.0)
        return self.delta.get(exposed(name, "_sum"), 0.0) / n if n else None


def drive(
    target: Target, devices: int, generators: int, tag: str, result_timeout: float, **kw: Any
) -> Drive:
    """Split `devices` over generator processes configured by `kw` (GeneratorConfig fields),
    start them together and measure the servers while they send."""
    g = max(1, min(generators, devices))
    cfgs = [
        GeneratorConfig(
            url=target.url,
            model=target.model,
            version=target.version,
            shape=target.shape,
            device_ids=tuple(range(i, devices, g)),
            devices=devices,
            out=str(target.work / f"{tag}-{i}.json"),
            **kw,
        )
        for i in range(g)
    ]
    seconds = cfgs[0].seconds
    gens: list[GeneratorProcess] = []
    try:
        for i, cfg in enumerate(cfgs):
            gens.append(GeneratorProcess(cfg, target.work / f"{tag}-{i}.log"))
        for gen in gens:
            gen.wait_ready()
        before = server_counters(target.metrics_ports)
        start = time.time() + GENERATOR_START_S
        for gen in gens:
            gen.go(start)
        # CPU shares over the sending window only (the wait for late answers would dilute them)
        time.sleep(max(0.0, start - time.time()))
        rss0, cpu0, all0 = target.rss_mb(), target.cpu_s(), machine_cpu()
        time.sleep(max(0.0, start + seconds - time.time()))
        cpu1, all1 = target.cpu_s(), machine_cpu()
        window = time.time() - start
        parts = [gen.result(result_timeout) for gen in gens]
        rss1 = target.rss_mb()
    finally:
        for gen in gens:
            gen.close()
    after = drain(target.metrics_ports, 30.0)
    return Drive(
        parts,
        {k: after[k] - before.get(k, 0.0) for k in after},
        cpu_shares(parts, cpu0, cpu1, all1 - all0, window),
        RssRange(rss0, rss1),
    )


def cpu_shares(
    parts: Sequence[OpenLoopPart | ClosedLoopPart],
    before: tuple[float, float | None],
    after: tuple[float, float | None],
    machine_s: float,
    window: float,
) -> CpuShares:
    """Who used the CPU over a sending `window` of seconds, from (servers, broker) CPU seconds
    before and after it and the machine's busy seconds in it."""
    server = 100 * (after[0] - before[0]) / window
    broker = None
    if before[1] is not None and after[1] is not None:
        broker = 100 * (after[1] - before[1]) / window
    gens = [100 * p.cpu_s / max(p.last_send_s, 1e-3) for p in parts]
    machine = 100 * machine_s / window
    return CpuShares(
        server_cpu_pct=server,
        broker_cpu_pct=broker,
        generator_cpu_pct=sum(gens),
        generator_cpu_pct_max=max(gens),
        machine_cpu_pct=machine,
        other_cpu_pct=max(0.0, machine - server - (broker or 0.0) - sum(gens)),
    )
