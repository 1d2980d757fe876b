"""`ddnn run`: the whole deployment on this machine — broker, server, edge (when the model has
several devices or an edge section) and N device processes — streaming the test split, then the
report from what the devices recorded."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddnn.emulation.profiles import load_device_profile, load_link_profile
from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, parse_broker_url
from ddnn.runtime.config import (
    ConnectionConfig,
    DeploymentConfig,
    DeviceConfig,
    EdgeConfig,
    ServerConfig,
    StreamConfig,
    to_argv,
)
from ddnn.runtime.executor import exit_thresholds
from ddnn.runtime.processes import Process
from ddnn.runtime.protocol import DEVICE_SERVER, EDGE_IDENTITY, SERVER_IDENTITY, default_device_ids
from ddnn.runtime.report import report_markdown, summarize
from ddnn.runtime.security import provision
from ddnn.store.artifact import open_model

if TYPE_CHECKING:
    from ddnn.emulation.session import EmulatedDevices

log = logging.getLogger(__name__)


def needs_edge(run_dir: str | Path) -> bool:
    spec = open_model(run_dir).spec
    return spec.devices > 1 or (len(spec.sections) > 2 and spec.sections[1].tier == "edge")


def run_deployment(
    run_dir: str | Path, out_dir: str | Path, config: DeploymentConfig | None = None
) -> dict[str, Any]:
    """Run every configuration in `config.modes` on one broker and server; returns the report,
    also written to out_dir as report.json and report.md with the per-sample records beside it.
    `config.secure`: a broker of its own with passwords, ACL and TLS, each process its own
    identity."""
    config = config or DeploymentConfig()
    stored = open_model(run_dir)
    spec = stored.spec
    n = config.devices or spec.devices
    if spec.devices > 1 and n != spec.devices:
        raise DdnnError(
            f"model {spec.name} fuses {spec.devices} devices; run it with --devices {spec.devices}"
        )
    if spec.devices == 1 and spec.sections[1:] and spec.sections[1].tier == "edge" and n != 1:
        raise DdnnError(f"model {spec.name} has an edge for one device; run it with --devices 1")
    out = Path(out_dir)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run = str(run_dir)
    report: dict[str, Any] = {
        "model": spec.name, "version": stored.version, "devices": n,
        "samples_requested": config.samples, "rate_per_device": config.rate,
        "engine": config.engine, "device_impl": config.device_impl, "workers": config.workers,
        "secure": config.secure,
        "thresholds": exit_thresholds(spec, config.thresholds),
        "threshold_source": "calibrated" if config.thresholds is None else "--threshold",
        "latency_budget_ms": config.latency_budget_ms, "mqtt_client": config.mqtt_client,
        "configurations": {},
    }  # fmt: skip
    device_ids = default_device_ids(n)
    with ExitStack() as stack:
        setup = provision(out / "secure", device_ids) if config.secure else None
        url = config.broker or stack.enter_context(MosquittoBroker(security=setup)).url
        emu = stack.enter_context(_emulation(config, n, url)) if config.emulated else None

        client = to_argv(ConnectionConfig(mqtt_client=config.mqtt_client))

        def connect(identity: str) -> list[str]:
            """How a tier process reaches the broker: its own access file when secure."""
            if setup is None:
                return ["--broker", url, *client]
            return ["--auth", str(setup.access_file(identity)), *client]

        server_config = ServerConfig(workers=config.workers)
        serve = ["serve", run, *connect(SERVER_IDENTITY), *to_argv(server_config)]
        tiers = [Process("server", serve, logs, True)]
        stack.callback(tiers[0].stop)
        if needs_edge(run_dir):
            edge_config = EdgeConfig(thresholds=config.thresholds)
            edge_argv = ["edge", run, *connect(EDGE_IDENTITY), *to_argv(edge_config)]
            edge = Process("edge", edge_argv, logs, True)
            stack.callback(edge.stop)
            tiers.append(edge)
        for tier in tiers:
            tier.wait_ready()
        for mode in config.modes:
            records = _stream(run, connect, spec.devices, device_ids, config, mode, logs, emu)
            (out / f"records-{mode}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in records)
            )
            report["configurations"][mode] = summarize(records)
        if emu is not None:
            report["emulation"] = emu.to_dict()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report) + "\n")
    plot_times(report, out / "time_ms.png")
    return report


def _stream(
    run: str,
    connect: Callable[[str], list[str]],
    model_devices: int,
    device_ids: list[str],
    config: DeploymentConfig,
    mode: str,
    logs: Path,
    emu: EmulatedDevices | None = None,
) -> list[dict[str, Any]]:
    """One device process per device; a single-device model's N devices share the samples.
    Emulated: device k runs in emulated device k, reaching the broker over its link, its
    inference dilated to the device profile's speed."""
    procs, n = [], len(device_ids)
    start = logs / f"start-{mode}"
    start.unlink(missing_ok=True)
    for k, device in enumerate(device_ids):
        index, offset, stride = (k, 0, 1) if model_devices > 1 else (0, k, n)
        rec_file = logs / f"records-{mode}-{device}.jsonl"
        client = DeviceConfig(
            device_id=device,
            index=index,
            engine=config.engine,
            mode=mode,
            deadline_ms=config.deadline_ms,
            thresholds=config.thresholds,
            latency_budget_ms=config.latency_budget_ms if mode == DEVICE_SERVER else None,
        )
        feed = StreamConfig(
            samples=config.samples,
            offset=offset,
            stride=stride,
            rate=config.rate,
            records=str(rec_file),
        )
        linked = emu is not None and emu.link is not None
        reach = ["--broker", emu.broker_url(k)] if linked else connect(device)
        command = "device" if config.device_impl == "python" else "agent"  # the C agent
        args = [command, run, *reach, *to_argv(client), *to_argv(feed)]
        args += ["--start-file", str(start)]
        launch = partial(emu.popen, k) if emu is not None else subprocess.Popen
        name = f"device-{mode}-{device}"
        procs.append((Process(name, args, logs, ready=True, launch=launch), rec_file))
    rate = config.rate
    budget = 60 + config.samples * (config.deadline_ms / 1000 + (1 / rate if rate else 0.05))
    records: list[dict[str, Any]] = []
    try:
        for proc, _ in procs:  # all loaded and connected, then all go at once
            proc.wait_ready()
        start.write_text("go\n")
        for proc, rec_file in procs:
            proc.wait(timeout=budget)
            records += [json.loads(x) for x in rec_file.read_text().splitlines()]
    finally:
        for proc, _ in procs:
            proc.stop()
    return records


def _emulation(config: DeploymentConfig, n: int, url: str) -> EmulatedDevices:
    """The emulated devices `--device-profile` / `--link` ask for. The device's compute is
    emulated by dilating its inference only (runtime/device.py, the C agent's ddnn_dilate.c), the
    mechanism the planner's profile predicts by (planning/profile.py); no CPU quota, so its other
    work runs at host speed (docs/emulation.md)."""
    from ddnn.emulation.session import EmulatedDevices

    device = load_device_profile(config.device_profile) if config.device_profile else None
    link = load_link_profile(config.link) if config.link else None
    return EmulatedDevices(
        n, broker=parse_broker_url(url), device=device, link=link, cpu_quota=False
    )


def plot_times(report: dict[str, Any], path: Path) -> None:
    """Median time per tier for each configuration, stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["configurations"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(names)
    for tier in ("device", "comm", "server"):
        values = [(report["configurations"][c]["time_ms"][tier]["p50"] or 0.0) for c in names]
        ax.bar(names, values, bottom=bottom, label=f"T_{tier}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("median ms per sample")
    ax.set_title(f"{report['model']}: time per tier ({report['devices']} devices)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
