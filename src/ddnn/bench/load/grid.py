"""The (K, R) grid against `ddnn serve` processes on a private (or given) Mosquitto: start the
servers, run the steps lightest first, skip what a failed step predicts, and report."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddnn.bench.load.drive import Target
from ddnn.bench.load.measure import child_pid
from ddnn.bench.load.steps import LoadStep, run_step
from ddnn.errors import DdnnError
from ddnn.net import free_port
from ddnn.runtime.broker import broker_or_own
from ddnn.runtime.config import ServerConfig, to_argv
from ddnn.runtime.processes import Process

log = logging.getLogger(__name__)

BEST_KEYS = ("devices", "rate_per_device", "offered_per_s", "p50_ms", "p99_ms")


def serve_argv(run_dir: str, url: str, config: ServerConfig) -> list[str]:
    """The `ddnn serve` command line (without `ddnn`) of one server under load."""
    return ["serve", run_dir, "--broker", url, *to_argv(config)]


@dataclass(frozen=True)
class ServerSetup:
    processes: int
    workers: int
    max_batch: int
    queue_limit: int
    rss_idle_mb: float


@dataclass(frozen=True)
class SkippedStep:
    """A step not run because a lighter one, `after` (devices, rate), failed."""

    devices: int
    rate_per_device: float
    after: tuple[int, float]


@dataclass
class LoadReport:
    model: str
    version: int
    seconds: float
    deadline_ms: float
    cpus: int | None
    server: ServerSetup
    generators: int
    steps: list[LoadStep] = field(default_factory=list)
    skipped: list[SkippedStep] = field(default_factory=list)

    @property
    def best(self) -> LoadStep | None:
        """The highest load held (the most devices at equal offered load)."""
        held = [s for s in self.steps if s.verdict == "held"]
        return max(held, key=lambda s: (s.offered_per_s, s.devices), default=None)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "model": self.model,
            "version": self.version,
            "seconds": self.seconds,
            "deadline_ms": self.deadline_ms,
            "cpus": self.cpus,
            "server": asdict(self.server),
            "generators": self.generators,
            "steps": [s.to_json() for s in self.steps],
            "skipped": [asdict(s) for s in self.skipped],
            "best": None if best is None else {k: best.to_json()[k] for k in BEST_KEYS},
        }


def bench_load(
    run_dir: str,
    devices: Sequence[int] = (4, 8, 16),
    rates: Sequence[float] = (25, 50, 100),
    seconds: float = 10.0,
    deadline_ms: float = 2000.0,
    broker: str | None = None,
    generators: int = 1,
    workers: int = 2,
    max_batch: int = 32,
    queue_limit: int = 1024,
    servers: int = 1,
    keep_going: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the (K, R) grid against `servers` `ddnn serve` processes (one shared-subscription
    group). Unless `keep_going`, a step that fails skips every step at least as heavy (as many
    devices or more and as high a rate or higher). Returns the `LoadReport` as JSON."""
    from tqdm.auto import tqdm

    from ddnn.bench.offload import offload_shape
    from ddnn.store.artifact import open_model  # torch: not in the generators

    if not devices or not rates or min(devices) < 1 or min(rates) <= 0 or seconds <= 0:
        raise DdnnError("give at least one device count >= 1, rate > 0 and seconds > 0")
    if servers < 1 or generators < 1:
        raise DdnnError("--servers and --generators must be at least 1")
    stored = open_model(run_dir)
    name, version = stored.name, stored.version
    shape = offload_shape(stored.load())
    grid = [(k, r) for k in sorted(set(devices)) for r in sorted(set(rates))]
    failed: list[tuple[int, float]] = []
    with broker_or_own(broker) as url, tempfile.TemporaryDirectory(prefix="ddnn-load-") as tmp:
        work = Path(tmp)
        ports = tuple(free_port() for _ in range(servers))
        procs: list[Process] = []
        bar = tqdm(grid, desc="bench load", unit="step", disable=not progress)
        try:
            for i, port in enumerate(ports):
                config = ServerConfig(
                    workers=workers, max_batch=max_batch, queue_limit=queue_limit, http_port=port
                )
                args = serve_argv(run_dir, url, config)
                procs.append(Process(f"load-server-{i}", args, work, ready=True))
            for proc in procs:
                proc.wait_ready()
            mosquitto = None if broker else child_pid("mosquitto")
            pids = tuple(proc.proc.pid for proc in procs)
            target = Target(url, name, version, shape, pids, mosquitto, ports, work)
            setup = ServerSetup(servers, workers, max_batch, queue_limit, target.rss_mb())
            report = LoadReport(
                name, version, seconds, deadline_ms, os.cpu_count(), setup, generators
            )
            for k, r in bar:
                worse_than = next(((fk, fr) for fk, fr in failed if k >= fk and r >= fr), None)
                if worse_than is not None and not keep_going:
                    report.skipped.append(SkippedStep(k, r, worse_than))
                    continue
                bar.set_postfix_str(f"{k} devices x {r:g}/s")
                step = run_step(target, k, r, seconds, deadline_ms, generators)
                log.info("%d x %g/s: %s", k, r, step.verdict)
                report.steps.append(step)
                if step.verdict != "held":
                    failed.append((k, r))
                for proc in procs:
                    if proc.proc.poll() is not None:
                        raise DdnnError(f"ddnn serve died during the benchmark:\n{proc.tail()}")
        finally:
            bar.close()
            for proc in procs:
                proc.stop()
    return report.to_json()
