"""`ddnn bench agent`: CPU time per offloaded sample of the C agent against the Python device,
each a child process streaming the same samples to one InferenceServer (every sample offloaded:
threshold 0; the Python device on the same generated C, engine c). Start-up (Python imports,
the connection) is taken out by running each twice, with `base` and `base + samples` samples,
and dividing the difference of their CPU times (getrusage of the child)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ddnn.agent.build import ensure_agent
from ddnn.export.fileformat import write_inputs
from ddnn.runtime.broker import MosquittoBroker
from ddnn.runtime.config import ServerConfig
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.store.artifact import open_model


def _views(run_dir: str | Path, n: int) -> Any:
    """The first n test samples of the run's dataset as device-0 views [n, C, h, w]."""
    from ddnn.model.views import device_view

    model = open_model(run_dir)
    test = model.data_source(None, None).load(val_fraction=0.0).test.head(n)
    return device_view(test.images.float().div(255), model.spec, 0).numpy()


def _cpu_s(argv: list[str]) -> float:
    """User + system CPU seconds of one child process run to the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with code {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def bench_agent(
    run_dir: str | Path, samples: int = 200, base: int = 20, repeats: int = 3
) -> dict[str, Any]:
    """Median CPU microseconds per offloaded sample of each device implementation."""
    result: dict[str, Any] = {"run_dir": str(run_dir), "samples": samples, "repeats": repeats}
    with (
        MosquittoBroker() as broker,
        MqttTransport.from_url(broker.url) as transport,
        InferenceServer(transport, ModelDB([run_dir]), ServerConfig(workers=1)),
        tempfile.TemporaryDirectory() as tmp,
    ):
        agent = ensure_agent(run_dir, 0, Path(tmp) / "agent")
        for n in (base, base + samples):
            write_inputs(Path(tmp) / f"inputs-{n}.bin", _views(run_dir, n))
        for impl in ("python", "c"):
            per_sample = []
            for r in range(repeats):
                cpu = []
                for n in (base, base + samples):
                    records = ["--records", f"{tmp}/{impl}-{r}-{n}.jsonl"]
                    if impl == "c":  # the binary itself, not the launcher that execs it
                        argv = [str(agent), "--inputs", f"{tmp}/inputs-{n}.bin", *records]
                    else:
                        argv = [sys.executable, "-m", "ddnn.cli", "device", str(run_dir)]
                        argv += ["--engine", "c", "--samples", str(n), *records]
                    cpu.append(_cpu_s([*argv, "--broker", broker.url, "--threshold", "0"]))
                per_sample.append((cpu[1] - cpu[0]) / samples * 1e6)
            result[impl] = {"cpu_us_per_sample": statistics.median(per_sample), "runs": per_sample}
    result["c_over_python"] = result["c"]["cpu_us_per_sample"] / result["python"]["cpu_us_per_sample"]
    return result


def bench_text(result: dict[str, Any]) -> str:
    py, c = result["python"]["cpu_us_per_sample"], result["c"]["cpu_us_per_sample"]
    return (
        f"CPU per offloaded sample, median of {result['repeats']} ({result['samples']} samples "
        f"each):\n  python device (engine c): {py:8.1f} us\n  C agent:                  "
        f"{c:8.1f} us\n  C / python: {result['c_over_python']:.3f}"
    )
