"""The two scenarios of `ddnn bench adaptive`, end to end: a private Mosquitto, one `ddnn serve`,
the disturbance, the static and the adaptive stream, then report.json, report.md and the plot.

- `server`: the server is loaded by other devices' offloads (a `ddnn bench load` generator) for
  the middle phase; optionally it runs under a CPU quota (`server_cores`, a small home server),
  so that a load the rest of this machine can bear overloads it.
- `link`: the device runs behind an emulated link (`ddnn.emulation`), changed live from the
  calm setting to the slow one and back.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ddnn.bench.adaptive.disturb import Disturbance, LinkSetting, LinkThrottle, ServerOverload
from ddnn.bench.adaptive.experiment import RUNS, Launcher, StreamSetup, stream, summary
from ddnn.bench.adaptive.phases import PhaseRow, Verdict, phase_table, verdict_lines
from ddnn.bench.adaptive.plot import plot_runs
from ddnn.bench.load.generator import GeneratorConfig
from ddnn.bench.load.grid import serve_argv
from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker
from ddnn.runtime.config import ServerConfig
from ddnn.runtime.processes import Process

log = logging.getLogger(__name__)

SCENARIOS = ("server", "link")


def bench_adaptive(
    run_dir: str,
    out: str | Path,
    setup: StreamSetup,
    *,
    scenario: str,
    load: tuple[int, float] = (8, 50.0),
    server_cores: float | None = None,
    workers: int = ServerConfig.workers,
    links: tuple[LinkSetting, LinkSetting] | None = None,
) -> dict[str, Any]:
    """Run both streams under `scenario` and write the report into `out`. `load`: (devices,
    requests/s each) of the extra load (`server`); `links`: (calm, slow) (`link`)."""
    from ddnn.bench.offload import offload_shape
    from ddnn.store.artifact import open_model  # torch: loaded here, not in the children

    if scenario not in SCENARIOS:
        raise DdnnError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    stored = open_model(run_dir)
    if stored.spec.devices != 1:
        raise DdnnError(f"{stored.name} fuses {stored.spec.devices} devices; use a 1-device model")
    work = Path(out)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    results = []
    with ExitStack() as stack:
        url = stack.enter_context(MosquittoBroker()).url
        server = Process(
            "server", serve_argv(run_dir, url, ServerConfig(workers=workers)), logs, True
        )
        stack.callback(server.stop)
        server.wait_ready()
        if server_cores is not None:
            stack.enter_context(_quota(server.proc.pid, server_cores))
        disturbance: Disturbance
        if scenario == "server":
            devices, rate = load
            template = GeneratorConfig(
                url=url, model=stored.name, version=stored.version,
                shape=offload_shape(stored.load()), device_ids=(), devices=devices, rate=rate,
                seconds=0.0, deadline_ms=setup.deadline_ms, out="",
            )  # fmt: skip
            disturbance = ServerOverload(template, logs)
            launch = _plain(url)
        else:
            calm, slow = links or (LinkSetting(100.0, 0.15), LinkSetting(0.5, 15.0))
            devices_emulated, launch = stack.enter_context(_emulated(url, calm, logs))
            disturbance = LinkThrottle(devices_emulated, calm, slow)
        phases = setup.phase_list(disturbance.label)
        for run in RUNS:
            log.info("%s stream, %s", run, disturbance.label)
            results.append(stream(run_dir, setup, run, disturbance, launch=launch, work=logs))
    about = {
        "model": stored.name, "version": stored.version, "scenario": scenario,
        "disturbance": disturbance.label, "server_cores": server_cores, "workers": workers,
        "load": list(load) if scenario == "server" else None,
        "links": [str(x) for x in (calm, slow)] if scenario == "link" else None,
    }  # fmt: skip
    report = summary(results, phases, setup, **about)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    (work / "report.md").write_text(report_text(report) + "\n")
    for r in results:
        (work / f"records-{r.run}.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in r.records)
        )
    plot_runs(report, {r.run: r.records for r in results}, work / "adaptive.png")
    return report


def report_text(report: dict[str, Any]) -> str:
    """The table and the target's verdicts, from report.json's content."""
    rows = [PhaseRow(**r) for r in report["rows"]]
    found = [Verdict(**v) for v in report["verdicts"]]
    s = report["setup"]
    head = (
        f"{report['model']} v{report['version']}, {report['disturbance']}; budget "
        f"{s['budget_ms']:g} ms, deadline {s['deadline_ms']:g} ms, {s['rate']:g} samples/s"
    )
    return f"{head}\n\n{phase_table(rows)}\n\nTarget (adaptive run):\n{verdict_lines(found)}"


def _plain(url: str) -> Launcher:
    """Device processes on this host, straight to the broker."""

    def launch(name: str, argv: list[str], logs: Path) -> Process:
        return Process(name, [*argv, "--broker", url], logs, ready=True)

    return launch


def _quota(pid: int, cores: float) -> Any:
    raise DdnnError("--server-cores needs ddnn.emulation (CPU quotas), not on this branch yet")


def _emulated(url: str, calm: LinkSetting, logs: Path) -> Any:
    raise DdnnError(
        "the link scenario needs ddnn.emulation (emulated links), not on this branch yet"
    )
