"""`ddnn bench agent`: CPU time per offloaded sample of the C agent against the Python device,
each a child process streaming the same samples to one InferenceServer (every sample offloaded:
threshold 0; the Python device runs the same generated C, engine c). Only the stream counts:
the CPU a child used by the time it says it is ready (model loaded, connected; all threads'
/proc schedstat, in ns) is taken from its total at exit (getrusage), so Python's start-up,
seconds of CPU that vary by a lot on a busy machine, does not drown the per-sample cost; the
exit (Python's tear-down) is taken out by subtracting a run of one sample."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ddnn.agent.build import ensure_agent
from ddnn.errors import DdnnError
from ddnn.export.fileformat import write_inputs
from ddnn.runtime.broker import MosquittoBroker
from ddnn.runtime.config import ServerConfig
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.store.artifact import open_model

READY_S = 120.0


def _views(run_dir: str | Path, n: int) -> Any:
    """The first n test samples of the run's dataset as device-0 views [n, C, h, w]."""
    from ddnn.model.views import device_view

    model = open_model(run_dir)
    test = model.data_source(None, None).load(val_fraction=0.0).test.head(n)
    return device_view(test.images.float().div(255), model.spec, 0).numpy()


def _cpu_so_far_s(pid: int) -> float:
    """CPU seconds all threads of `pid` have run (schedstat: ns, not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _stream_cpu_s(argv: list[str], folder: Path) -> float:
    """CPU seconds of one child between its ready signal and its exit."""
    ready, start = folder / "ready", folder / "start"
    ready.unlink(missing_ok=True)
    start.unlink(missing_ok=True)
    argv = [*argv, "--ready-file", str(ready), "--start-file", str(start)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise DdnnError(f"{' '.join(argv)} did not get ready (code {proc.returncode})")
        time.sleep(0.01)
    before = _cpu_so_far_s(proc.pid)
    start.write_text("go\n")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise DdnnError(f"{' '.join(argv)} failed with code {proc.returncode}")
    return usage.ru_utime + usage.ru_stime - before


def bench_agent(run_dir: str | Path, samples: int = 300, repeats: int = 3) -> dict[str, Any]:
    """Median CPU microseconds per offloaded sample of each device implementation."""
    result: dict[str, Any] = {"run_dir": str(run_dir), "samples": samples, "repeats": repeats}
    with (
        MosquittoBroker() as broker,
        MqttTransport.from_url(broker.url) as transport,
        InferenceServer(transport, ModelDB([run_dir]), ServerConfig(workers=1)),
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        agent = ensure_agent(run_dir, 0, folder / "agent")
        n = len(views := _views(run_dir, samples))
        for count in (1, n):
            write_inputs(folder / f"inputs-{count}.bin", views[:count])

        def argv(impl: str, count: int) -> list[str]:
            if impl == "c":  # the agent itself, not the launcher that execs it
                head = [str(agent), "--inputs", str(folder / f"inputs-{count}.bin")]
            else:
                head = [sys.executable, "-m", "ddnn.cli", "device", str(run_dir)]
                head += ["--engine", "c", "--samples", str(count)]
            tail = ["--broker", broker.url, "--threshold", "0"]
            return [*head, *tail, "--records", str(folder / f"{impl}.jsonl")]

        for impl in ("python", "c"):
            runs = []
            for _ in range(repeats):  # (n samples - 1 sample) / (n - 1): no exit costs
                full, one = (_stream_cpu_s(argv(impl, k), folder) for k in (n, 1))
                runs.append((full - one) / (n - 1) * 1e6)
            result[impl] = {"cpu_us_per_sample": statistics.median(runs), "runs": runs}
    result["samples"] = n
    python, c = result["python"]["cpu_us_per_sample"], result["c"]["cpu_us_per_sample"]
    result["c_over_python"] = c / python
    return result


def bench_text(result: dict[str, Any]) -> str:
    py, c = result["python"]["cpu_us_per_sample"], result["c"]["cpu_us_per_sample"]
    return (
        f"CPU per offloaded sample, median of {result['repeats']} runs of {result['samples']} "
        f"samples:\n  python device (engine c): {py:8.1f} us\n  C agent:                  "
        f"{c:8.1f} us\n  C / python: {result['c_over_python']:.3f}"
    )
