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
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
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
        if server_cores is not None:  # removed after the server stops (an ExitStack unwinds)
            limit = stack.enter_context(_server_quota(server_cores))
        server = Process(
            "server", serve_argv(run_dir, url, ServerConfig(workers=workers)), logs, True
        )
        stack.callback(server.stop)
        server.wait_ready()
        if server_cores is not None:
            limit(server.proc.pid)
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
            calm, slow = links or (LinkSetting(100.0, 0.15), LinkSetting(0.5, 25.0))
            devices_emulated, launch = stack.enter_context(_emulated(url, calm))
            disturbance = LinkThrottle(devices_emulated, calm, slow)
        phases = setup.phase_list(disturbance.label)
        for run in RUNS:
            log.info("%s stream, %s", run, disturbance.label)
            results.append(stream(run_dir, setup, run, disturbance, launch=launch, work=logs))
        emulation = devices_emulated.to_dict() if scenario == "link" else None
    about = {
        "model": stored.name, "version": stored.version, "scenario": scenario,
        "disturbance": disturbance.label, "server_cores": server_cores, "workers": workers,
        "load": list(load) if scenario == "server" else None,
        "links": [str(x) for x in (calm, slow)] if scenario == "link" else None,
        "emulation": emulation,
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
    text = f"{head}\n\n{phase_table(rows)}\n\nTarget (adaptive run):\n{verdict_lines(found)}"
    moved = report.get("timeline", {}).get("adaptive")
    if moved:

        def secs(value: float | None) -> str:
            return "not within the run" if value is None else f"{value:g} s"

        text += (
            f"\n\nAdaptive threshold: first raised {secs(moved['first_raise_s'])} after the "
            f"disturbance began, peak {moved['peak']:.2f} {secs(moved['peak_s'])} after it; "
            f"back at the calibrated value {secs(moved['back_s'])} after it ended"
        )
    return text


def _plain(url: str) -> Launcher:
    """Device processes on this host, straight to the broker."""

    def launch(name: str, argv: list[str], logs: Path) -> Process:
        return Process(name, [*argv, "--broker", url], logs, ready=True)

    return launch


@contextmanager
def _server_quota(cores: float) -> Iterator[Callable[[int], None]]:
    """A CPU quota for the server (`emulation.cpu`), entered once the server has loaded at
    full speed: -> `limit(pid)`. The cgroup is removed on exit, after the server has stopped."""
    from ddnn.emulation.cpu import CpuControl

    control = CpuControl.detect()
    if control.kind == "none":
        raise DdnnError(f"--server-cores: no CPU quota possible on this host ({control.why})")
    path = control.create(f"ddnn-adaptive-server-{os.getpid()}", cores)
    assert path is not None

    def limit(pid: int) -> None:
        # moving a running process (all its threads) in: emulation.cpu's enter_cgroup is a
        # preexec_fn for children not started yet, and the server must load torch unlimited
        (path / "cgroup.procs").write_text(str(pid))
        log.info("server (pid %d) limited to %g cores", pid, cores)

    try:
        yield limit
    finally:
        CpuControl.remove(path, kill=False)


@contextmanager
def _emulated(url: str, calm: LinkSetting) -> Iterator[tuple[Any, Launcher]]:
    """One emulated device (its own network namespace, link and relay) starting at `calm`:
    -> (the emulation, a launcher of device processes behind its link)."""
    from dataclasses import replace

    from ddnn.emulation.profiles import load_link_profile
    from ddnn.emulation.session import EmulatedDevices

    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    link = replace(
        load_link_profile("ethernet-100"), rate_mbit=calm.rate_mbit, delay_ms=calm.delay_ms
    )
    with EmulatedDevices(1, broker=(host, int(port)), link=link) as emu:

        def launch(name: str, argv: list[str], logs: Path) -> Process:
            args = [*argv, "--broker", emu.broker_url(0)]
            return Process(name, args, logs, ready=True, launch=partial(emu.popen, 0))

        yield emu, launch
