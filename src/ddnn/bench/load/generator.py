"""A load-generator process: its config (one JSON line on stdin), its results (a JSON file) and
the parent's handle on it. The sending itself is `openloop` or `closedloop`.

A separate process per generator, so that the devices share no GIL with the server they load.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from ddnn import logs
from ddnn.bench.child import ConfiguredChild
from ddnn.errors import DdnnError


@dataclass(frozen=True)
class GeneratorConfig:
    """What one generator process sends; passed as one JSON line on its stdin."""

    url: str
    model: str
    version: int
    shape: tuple[int, ...]  # per-request section-1 input, [D, *device output]
    device_ids: tuple[int, ...]  # global device numbers this generator plays (of `devices`)
    devices: int  # K: all devices of the step, to stagger their phases evenly
    rate: float  # R: requests/s per device
    seconds: float
    deadline_ms: float
    out: str  # where the results JSON goes
    window: int = 0  # > 0: closed loop, this many requests in flight per device (rate unused)

    @property
    def names(self) -> list[str]:
        """The devices' MQTT client names, which are also their reply topics' names."""
        return [f"load{k}" for k in self.device_ids]


@dataclass(frozen=True)
class OpenLoopPart:
    """One open-loop generator's requests, classified. Counts: sent, ok, shed, error, lost,
    late (answered after the deadline; also in lost) and send_errors (also in error)."""

    scheduled: int
    counts: dict[str, int]
    latency_ms: list[float]  # from the scheduled send, replies only; inf per unanswered request
    lag_ms: list[float]  # how late each send left
    last_send_s: float
    cpu_s: float  # while sending


@dataclass(frozen=True)
class ClosedLoopPart:
    """One closed-loop generator's replies. Counts: errors, unmatched, send_errors, lost."""

    answered_in_window: int  # replies before the end of the window: the throughput
    counts: dict[str, int]
    latency_ms: list[float]  # round trips
    server_ms: list[float]  # of which in the server (queue + compute, as the replies say)
    cpu_s: float
    last_send_s: float


def start_time(ready: IO[str], go: IO[str]) -> float:
    """Say `ready`, read the common start (epoch seconds) from `go`; as a perf_counter time."""
    ready.write("ready\n")
    ready.flush()
    start_epoch = float(go.readline())
    return time.perf_counter() + (start_epoch - time.time())


def generator_main() -> None:
    """Entry point of a generator process: config on stdin, results to `cfg.out`."""
    from ddnn.bench.load.closedloop import run_closed_loop
    from ddnn.bench.load.openloop import run_open_loop

    logs.configure(fmt=logs.BRIEF)
    raw = json.loads(sys.stdin.readline())
    raw["shape"], raw["device_ids"] = tuple(raw["shape"]), tuple(raw["device_ids"])
    cfg = GeneratorConfig(**raw)
    run = run_closed_loop if cfg.window > 0 else run_open_loop
    result: OpenLoopPart | ClosedLoopPart = run(cfg, sys.stdout, sys.stdin)
    Path(cfg.out).write_text(json.dumps(asdict(result)))


class GeneratorProcess(ConfiguredChild):
    """A generator child process, driven over its pipes."""

    def __init__(self, cfg: GeneratorConfig, log_path: Path) -> None:
        entry = f"{__name__}:generator_main"
        super().__init__(entry, asdict(cfg), log_path, "load generator")
        self.cfg = cfg

    def go(self, start_epoch: float) -> None:
        self.send(repr(start_epoch), last=True)

    def result(self, timeout: float) -> OpenLoopPart | ClosedLoopPart:
        code = self.finish(timeout)
        if code != 0:
            raise DdnnError(f"load generator exited with code {code}:\n{self.tail()}")
        raw: dict[str, Any] = json.loads(Path(self.cfg.out).read_text())
        return ClosedLoopPart(**raw) if self.cfg.window > 0 else OpenLoopPart(**raw)
