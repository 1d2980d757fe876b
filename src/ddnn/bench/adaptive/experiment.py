"""`ddnn bench adaptive`: a fixed exit threshold against the latency-budget controller on one
stream whose conditions change in the middle (calm -> disturbed -> calm).

A real `ddnn device` process streams the test split at a steady rate through a real
`ddnn serve` over Mosquitto, twice: with the calibrated threshold, then with
`--latency-budget-ms`. The driver follows the device's records file as it is written and switches
the disturbance on and off when the stream reaches the phase boundaries, so both runs see the
same samples in every phase. Each record gets the time it was seen (`t_s`, seconds since the
stream started) for the plot.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ddnn.bench.adaptive.disturb import Disturbance
from ddnn.bench.adaptive.phases import Phase, boundaries, phase_rows, timeline, verdicts
from ddnn.errors import DdnnError
from ddnn.runtime.config import DeviceConfig, StreamConfig, to_argv
from ddnn.runtime.processes import Process

log = logging.getLogger(__name__)

RUNS = ("static", "adaptive")
POLL_S = 0.01  # how often the records file is read: the lag of a phase switch


@dataclass(frozen=True, kw_only=True)
class StreamSetup:
    """The measured device's stream: budget, deadline, rate, phase lengths."""

    budget_ms: float
    deadline_ms: float
    rate: float  # samples/s
    phases: tuple[int, int, int]  # samples: calm, disturbed, calm
    engine: str = DeviceConfig.engine

    def __post_init__(self) -> None:
        if self.budget_ms <= 0 or self.deadline_ms <= 0 or self.rate <= 0:
            raise DdnnError("the budget, the deadline and the rate must be positive")
        if len(self.phases) != 3 or min(self.phases) < 1:
            raise DdnnError(f"--phases takes three sample counts >= 1, got {self.phases}")

    def phase_list(self, disturbed: str) -> list[Phase]:
        calm, bad, after = self.phases
        return [Phase("calm", calm), Phase(disturbed, bad, True), Phase("calm again", after)]


# starts `ddnn <argv>` as the device, named `name`, logging into `logs`; the broker URL the
# device must use is the launcher's business (emulated devices reach it through their link)
Launcher = Callable[[str, list[str], Path], Process]


@dataclass
class RunResult:
    """One stream: its records (each with `t_s`) and when the disturbance went on and off."""

    run: str
    records: list[dict[str, Any]]
    switches: list[dict[str, float]] = field(default_factory=list)  # sample, t_s, action


def stream(
    run_dir: str,
    setup: StreamSetup,
    run: str,
    disturbance: Disturbance,
    *,
    launch: Launcher,
    work: Path,
) -> RunResult:
    """One run (`static` or `adaptive`) of the whole stream, the disturbance switched at the
    phase boundaries; the device process is stopped and the disturbance restored on any exit."""
    records_file = work / f"records-{run}.jsonl"
    start_file = work / f"start-{run}"
    for stale in (records_file, start_file):
        stale.unlink(missing_ok=True)
    client = DeviceConfig(
        engine=setup.engine,
        deadline_ms=setup.deadline_ms,
        latency_budget_ms=setup.budget_ms if run == "adaptive" else None,
    )
    total = sum(setup.phases)
    feed = StreamConfig(samples=total, rate=setup.rate, records=str(records_file))
    argv = ["device", run_dir, *to_argv(client), *to_argv(feed), "--start-file", str(start_file)]
    edges = boundaries([Phase("", n) for n in setup.phases])
    actions = [disturbance.apply, disturbance.restore]
    result = RunResult(run, [])
    timeout = 60 + total * (setup.deadline_ms / 1000 + 1 / setup.rate)
    disturbance.prepare(run)
    device = launch(f"device-{run}", argv, work)
    try:
        device.wait_ready()
        start_file.write_text("go\n")
        t0 = time.perf_counter()
        offset = 0
        while True:
            done = device.proc.poll() is not None
            offset = _read_new(records_file, offset, result.records, time.perf_counter() - t0)
            while edges and len(result.records) >= edges[0]:
                edges.pop(0)
                action = actions.pop(0)
                action()
                result.switches.append(
                    {"sample": len(result.records), "t_s": time.perf_counter() - t0,
                     "action": action.__name__}
                )  # fmt: skip
            if done:
                break
            if time.perf_counter() - t0 > timeout:
                raise DdnnError(f"the {run} stream did not finish within {timeout:.0f} s")
            time.sleep(POLL_S)
        device.wait(timeout=10)  # its exit code: a failed device is an error, with its log
    finally:
        disturbance.restore()
        device.stop()
    return result


def _read_new(path: Path, offset: int, into: list[dict[str, Any]], t_s: float) -> int:
    """Append the complete lines written past `offset` (stamped `t_s`); -> the new offset."""
    if not path.exists():
        return offset
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
    for line in chunk[:end].splitlines():
        into.append({**json.loads(line), "t_s": round(t_s, 4)})
    return offset + end


def summary(
    results: Sequence[RunResult], phases: Sequence[Phase], setup: StreamSetup, **about: Any
) -> dict[str, Any]:
    """The report: per-phase rows of both runs, the target's verdicts, and what was run."""
    rows = {r.run: phase_rows(r.run, r.records, phases) for r in results}
    found = verdicts(rows["static"], rows["adaptive"], setup.budget_ms)
    moved = {}
    for r in results:
        times = [s["t_s"] for s in r.switches]
        if len(times) == 2 and r.records:
            moved[r.run] = asdict(timeline(r.records, *times))
    return {
        **about,
        "setup": asdict(setup),
        "phases": [asdict(p) for p in phases],
        "load_average": os.getloadavg(),
        "rows": [asdict(row) for run in RUNS for row in rows[run]],
        "verdicts": [asdict(v) for v in found],
        "switches": {r.run: r.switches for r in results},
        "timeline": moved,
    }
