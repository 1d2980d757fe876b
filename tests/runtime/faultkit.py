"""What the fault and overload tests share: starting tiers as processes, streaming, reading
their records and metrics, and the checks that every request was answered exactly once."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ddnn.bench.load import rss_mb
from ddnn.data.datasets import create_dataset
from ddnn.model.views import device_view
from ddnn.runtime.config import (
    ConnectionConfig,
    DeviceConfig,
    ServerConfig,
    StreamConfig,
    to_argv,
)
from ddnn.runtime.device import Record
from ddnn.runtime.metrics import parse_samples
from ddnn.runtime.processes import Process
from ddnn.store.artifact import read_spec

log = logging.getLogger(__name__)

DEVICE_COMMANDS = {"python": "device", "c": "agent"}  # the device implementations
READY_S = 60.0  # a tier process imports torch and loads the model: slow on a loaded machine


def serve(
    name: str, run: Path, url: str, logs: Path, config: ServerConfig, client: str = "paho"
) -> Process:
    args = ["serve", str(run), "--broker", url, *to_argv(config), *_client(client)]
    return Process(name, args, logs, ready=True)


def stream(
    name: str,
    run: Path,
    url: str,
    logs: Path,
    samples: int,
    *,
    rate: float = 0.0,
    deadline_ms: float = 1000.0,
    index: int = 0,
    impl: str = "python",
    client: str = "paho",
) -> tuple[Process, Path]:
    """A device process streaming the first `samples` test samples; its records file. `impl`:
    `ddnn device` (python) or the C agent (c: `ddnn agent`, which execs the agent)."""
    records = logs / f"{name}.jsonl"
    device = DeviceConfig(device_id=name, index=index, deadline_ms=deadline_ms)
    feed = StreamConfig(samples=samples, rate=rate, records=str(records))
    command = DEVICE_COMMANDS[impl]
    args = [command, str(run), "--broker", url, *to_argv(device), *to_argv(feed)]
    if impl == "python":  # the C agent speaks libmosquitto itself
        args += _client(client)
    return Process(name, [*args, "--dataset", "synthetic"], logs), records


def _client(name: str) -> list[str]:
    """The flag that makes a tier process speak MQTT through client library `name`."""
    return to_argv(ConnectionConfig(mqtt_client=name))


def lines(path: Path) -> int:
    """Complete records written so far."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, watch: Iterable[Process] = ()
) -> None:
    """Poll (5 ms) until `condition`; fail on timeout or when a watched process exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in watch:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited ({p.proc.returncode}):\n{p.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.005)


def metrics_of(server: Process) -> dict[str, float]:
    """A `ddnn serve` process's samples, scraped from the /metrics URL it printed; keys as in
    the exposition, e.g. `ddnn_errors_total{code="overloaded"}`."""
    found = re.search(r"metrics (http://\S+/metrics)", server.log_path.read_text())
    assert found, f"{server.name} did not print its metrics URL:\n{server.tail()}"
    text = urllib.request.urlopen(found.group(1), timeout=5).read().decode()
    return parse_samples(text)


def replies_sent(server: Process) -> float:
    """ddnn_replies_total over all its labels."""
    found = metrics_of(server).items()
    return sum(v for k, v in found if k.split("{")[0] == "ddnn_replies_total")


def rss_kb(pid: int) -> int:
    return round(rss_mb(pid) * 1024)  # /proc reports kB: exact


def check_each_frame_once(records: list[dict], devices: Iterable[str], frames: int) -> None:
    """Every device has exactly one record per frame id 0..frames-1: none lost, none twice."""
    per_device = Counter((r["device"], r["frame_id"]) for r in records)
    assert max(per_device.values()) == 1, "a frame was answered twice"
    for device in devices:
        got = sorted(f for d, f in per_device if d == device)
        assert got == list(range(frames)), f"{device} answered frames {got}"


def tally(records: list[dict] | list[Record]) -> dict[str, int]:
    rows = [r if isinstance(r, dict) else r.to_dict() for r in records]
    status = Counter(r["status"] for r in rows)
    keys = Counter((r["device"], r["frame_id"]) for r in rows)
    return {
        "requests": len(rows),
        "ok": status["ok"],
        "degraded": status["degraded"],
        "lost": status["lost"],
        "errors": status["error"],
        "duplicates": sum(n - 1 for n in keys.values()),
    }


def report(test: str, started: float, **numbers: object) -> None:
    """The observed numbers, for docs/reliability.md: logged (`--log-cli-level=INFO` shows
    them) and appended as a JSON line to $DDNN_FAULTS_REPORT when it is set."""
    numbers["seconds"] = round(time.monotonic() - started, 1)
    line = json.dumps({"test": test, **numbers})
    log.info("FAULT %s", line)
    if os.environ.get("DDNN_FAULTS_REPORT"):
        with open(os.environ["DDNN_FAULTS_REPORT"], "a") as f:
            f.write(line + "\n")


def stop_all(procs: Iterable[Process]) -> None:
    for p in procs:
        p.stop()


def raw_views(n: int, run: Path, index: int = 0) -> list[np.ndarray]:
    spec = read_spec(run)
    x = create_dataset("synthetic").test.head(n).images.float().div(255)
    return [device_view(x[i : i + 1], spec, index)[0].numpy() for i in range(n)]
