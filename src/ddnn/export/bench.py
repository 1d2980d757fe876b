"""`ddnn bench device`: single-sample latency of one device section in PyTorch eager,
onnxruntime and the generated C, all on one thread in one run; binary against float convolution
of the same shape in C; and the memory the device needs, as eBNN reports it.

Timings are medians of individually timed calls after a warm-up. The C is timed twice: through
ctypes (what a Python device process pays) and inside the harness with clock_gettime (the code
alone, no Python in the loop); ratios use the in-harness time.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddnn.data.source import DataSource
from ddnn.errors import DdnnError
from ddnn.export.cexport import HARNESS, build, read_manifest
from ddnn.export.cops import PRELUDE, emit_op, tensor_words
from ddnn.export.engines import CEngine, OnnxEngine, TorchEngine
from ddnn.export.fileformat import write_inputs
from ddnn.export.harness import DEFAULT_CFLAGS, TIMING_C
from ddnn.export.ir import Affine, Conv, lower_device
from ddnn.export.verify import sample_views

log = logging.getLogger(__name__)


def resolve_run(target: str, source: DataSource | None, work: Path) -> tuple[Path, str]:
    """A run folder as given, or a preset's untrained model (latency depends only on shapes)
    saved under `work`. Returns the folder and a description."""
    from ddnn.model.presets import load_config_dict, model_spec_from_dict, preset_names

    path = Path(target)
    if (path / "spec.json").is_file():
        return path, f"run {path}"
    if target not in preset_names():
        raise DdnnError(
            f"{target!r} is neither a run folder (no spec.json) nor a preset; presets: "
            f"{', '.join(preset_names())}"
        )
    from ddnn.model.hierarchy import HierarchicalModel
    from ddnn.model.inputs import fit_to_data
    from ddnn.store.artifact import save_model

    source = source or DataSource("fashion-mnist")
    name = source.dataset
    data = source.load(val_fraction=0.0)
    spec = fit_to_data(model_spec_from_dict(load_config_dict(target)["model"]), data)
    torch.manual_seed(0)
    folder = save_model(HierarchicalModel(spec).eval(), work / "model", data=source)
    return folder, f"preset {target} (untrained weights, {name} shapes)"


def median_ns(fn: Callable[[], object], repeats: int, warmup: int = 50) -> float:
    """Median wall time of one call of fn, in ns, each call timed on its own."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return float(statistics.median(times))


def _parse_median(text: str) -> float:
    match = re.search(r"median_ns=(\d+)", text)
    if not match:
        raise DdnnError(f"unexpected timing output: {text.strip()}")
    return float(match.group(1))


def _harness_time(folder: Path, inputs: Path, repeats: int, idle_factor: float) -> str:
    """The harness's --time output (harness.py): a summary line, then one line per run."""
    cmd = [str(folder / HARNESS), "--time", str(repeats), str(inputs), repr(float(idle_factor))]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise DdnnError(f"timing in the harness failed: {result.stderr.strip()}")
    return result.stdout


def harness_ns(folder: Path, inputs: Path, repeats: int) -> float:
    """The harness's own median over `repeats` runs of the first input."""
    return _parse_median(_harness_time(folder, inputs, repeats, 0.0))


def harness_samples(
    folder: Path, inputs: Path, repeats: int, idle_factor: float = 0.0
) -> tuple[list[float], list[float]]:
    """(wall ns, thread CPU ns) of each of `repeats` runs of the first input, in run order,
    timed inside the harness; after each run it sleeps `idle_factor` x the run's CPU time."""
    text = _harness_time(folder, inputs, repeats, idle_factor)
    runs = re.findall(r"^run wall_ns=(\d+) cpu_ns=(\d+)$", text, re.MULTILINE)
    if len(runs) != repeats:
        raise DdnnError(f"the harness timed {len(runs)} runs, not {repeats}: rebuild it")
    return [float(w) for w, _ in runs], [float(c) for _, c in runs]


def float_twin(op: Conv, seed: int = 0) -> Conv:
    """A float convolution of the same shape (float input, float weights, bias, relu)."""
    rng = np.random.default_rng(seed)
    c_out = op.out_shape[0]
    return Conv(
        op.in_shape, op.out_shape, "float", "float",
        weight=rng.standard_normal((c_out, op.in_shape[0], op.kernel, op.kernel), np.float32),
        bias=np.zeros(c_out, np.float32), act="relu",
        kernel=op.kernel, stride=op.stride, padding=op.padding, pool=op.pool,
    )  # fmt: skip


def conv_bench_source(pairs: list[tuple[Conv, Conv]], repeats: int) -> str:
    """A C program timing each binary convolution and its float twin; prints one line each."""
    ops = [op for pair in pairs for op in pair]
    emitted = [emit_op(op, n) for n, op in enumerate(ops)]
    size = max(max(tensor_words(o.in_shape, o.in_kind), tensor_words(o.out_shape, o.out_kind))
               for o in ops)  # fmt: skip
    scratch = max([e.scratch_words for e in emitted] + [1])
    calls = "\n".join(
        f'    report("op_{n}", time_op(op_{n}, {"bits_in" if op.in_kind == "bits" else "float_in"}'
        f", {repeats}));"
        for n, op in enumerate(ops)
    )
    return f"""\
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
{PRELUDE}
{"".join(e.constants for e in emitted)}
{"".join(e.function for e in emitted)}
static ddnn_word bits_in[{size}], float_in[{size}], out_buf[{size}], tmp_buf[{scratch}];
typedef void (*op_fn)(const ddnn_word *, ddnn_word *, ddnn_word *);

{TIMING_C}
static double time_op(op_fn fn, const ddnn_word *in, int repeats)
{{
    static double t[{repeats}];
    for (int i = 0; i < 20; i++) fn(in, out_buf, tmp_buf);
    for (int i = 0; i < repeats; i++) {{
        const double t0 = now_ns();
        fn(in, out_buf, tmp_buf);
        t[i] = now_ns() - t0;
    }}
    qsort(t, (size_t)repeats, sizeof(double), by_value);
    return t[repeats / 2];
}}

static void report(const char *name, double ns)
{{
    printf("%s median_ns=%.0f\\n", name, ns);
}}

int main(void)
{{
    srand(1);
    for (int i = 0; i < {size}; i++) {{
        bits_in[i].u = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
        float_in[i].f = (float)rand() / (float)RAND_MAX;
    }}
{calls}
    return 0;
}}
"""


def bench_convs(low_ops: list[Any], folder: Path, cc: str, cflags: str, repeats: int) -> list[dict]:
    """Each binary convolution of the section against its float twin, timed in C."""
    convs = [op for op in low_ops if isinstance(op, Conv) and op.binary]
    if not convs:
        return []
    pairs = [(op, float_twin(op)) for op in convs]
    src = folder / "conv_bench.c"
    src.write_text(conv_bench_source(pairs, repeats))
    exe = folder / "conv_bench"
    cmd = [cc, "-std=c99", *cflags.split(), "-o", str(exe), str(src), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DdnnError(f"building the convolution benchmark failed: {result.stderr.strip()}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=600)
    times = [_parse_median(line) for line in out.stdout.splitlines()]
    rows = []
    for i, (op, _) in enumerate(pairs):
        c_in, h, w = op.in_shape
        binary_ns, float_ns = times[2 * i], times[2 * i + 1]
        rows.append(
            {
                "layer": f"{c_in}x{h}x{w} -> {op.out_shape[0]} k{op.kernel} pool {op.pool}",
                "input": "binary (XNOR + popcount)" if op.integer else "float (+-1 weights)",
                "binary_ns": binary_ns,
                "float_ns": float_ns,
                "speedup": float_ns / binary_ns,
                "weights_bytes": 4 * math.ceil(op.weight.size / 32),
                "float_weights_bytes": 4 * op.weight.size,
            }
        )
    return rows


def bench_device(
    target: str,
    device: int = 0,
    dataset: DataSource | None = None,
    repeats: int = 2000,
    out_dir: str | Path | None = None,
    cc: str = "cc",
    cflags: str = DEFAULT_CFLAGS,
) -> dict[str, Any]:
    """Latency, binary vs float convolution and memory of one device section; `dataset` gives
    a preset's shapes (default Fashion-MNIST)."""
    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="ddnn_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir, described = resolve_run(target, dataset, work)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        views, source = sample_views(run_dir, device, 1)
        t_engine = TorchEngine(run_dir, device)
        o_engine = OnnxEngine(run_dir, device, artifacts=work / "onnx", threads=1)
        c_engine = CEngine(run_dir, device, artifacts=work / "c", cflags=cflags)
        build(c_engine.path, ("harness",), cc=cc, cflags=cflags)
        x_torch = torch.from_numpy(views)
        x_np = np.ascontiguousarray(views)
        x_c = np.ascontiguousarray(views[0])
        c_call = c_engine.single()

        def run_torch() -> object:
            with torch.inference_mode():
                return t_engine.model.run_device(device, x_torch)

        feed = {"view": x_np}
        latency = {
            "torch": median_ns(run_torch, repeats),
            "onnxruntime": median_ns(lambda: o_engine.session.run(None, feed), repeats),
            "c_ctypes": median_ns(lambda: c_call(x_c), repeats),
            "c": harness_ns(c_engine.path, write_inputs(work / "input.bin", views), repeats),
        }
    finally:
        torch.set_num_threads(threads)
    low = lower_device(t_engine.model, device)
    manifest = read_manifest(c_engine.path)
    convs = bench_convs(low.body + low.head, work, cc, cflags, max(repeats // 4, 100))
    float_weight_bytes = sum(
        4 * op.weight.size for op in low.body + low.head if isinstance(op, Affine) and op.binary
    )
    return {
        "model": manifest["model"],
        "source": described,
        "input": source,
        "repeats": repeats,
        "threads": 1,
        "cflags": cflags,
        "latency_ns": latency,
        "ratios": {
            "c / onnxruntime": latency["c"] / latency["onnxruntime"],
            "c / torch": latency["c"] / latency["torch"],
            "onnxruntime / torch": latency["onnxruntime"] / latency["torch"],
            "c_ctypes / onnxruntime": latency["c_ctypes"] / latency["onnxruntime"],
        },
        "convolutions": convs,
        "memory": manifest["footprint"]
        | {
            "binary_weights_as_float32_bytes": float_weight_bytes,
            "feature_bytes": (
                math.ceil(math.prod(low.feature_shape) / 8)
                if low.binary_features
                else 4 * math.prod(low.feature_shape)
            ),
        },
        "work_dir": str(work),
    }


def bench_text(r: dict[str, Any]) -> str:
    """A human-readable summary of bench_device's result."""
    from ddnn.tables import markdown_table

    lat = r["latency_ns"]
    names = {"torch": "torch eager", "onnxruntime": "onnxruntime", "c": "C (in harness)",
             "c_ctypes": "C (ctypes)"}  # fmt: skip
    rows = [
        (label, f"{lat[key] / 1e3:.1f}", f"{lat[key] / lat['onnxruntime']:.2f}")
        for key, label in names.items()
    ]
    mem = r["memory"]
    lines = [
        f"{r['model']} ({r['source']}); input: {r['input']}",
        f"one thread, median of {r['repeats']} single-sample runs; C built with {r['cflags']}",
        "",
        markdown_table(("engine", "median us", "x onnxruntime"), rows),
        "",
        f"C / onnxruntime = {r['ratios']['c / onnxruntime']:.2f} (target <= 1), "
        f"C / torch = {r['ratios']['c / torch']:.2f}",
    ]
    if r["convolutions"]:
        lines += [
            "",
            "binary vs float convolution of the same shape, in C:",
            markdown_table(
                ("layer", "binary input", "binary us", "float us", "float / binary"),
                [
                    (
                        c["layer"],
                        c["input"],
                        f"{c['binary_ns'] / 1e3:.2f}",
                        f"{c['float_ns'] / 1e3:.2f}",
                        f"{c['speedup']:.1f}",
                    )
                    for c in r["convolutions"]
                ],
            ),
        ]
    lines += [
        "",
        f"memory: weights {mem['weight_bytes']} B (binary weights would take "
        f"{mem['binary_weights_as_float32_bytes']} B as float32), activations "
        f"{mem['activation_bytes']} B static RAM (peak live {mem['peak_live_bytes']} B), "
        f"{mem['feature_bytes']} B of features per offloaded sample",
    ]
    return "\n".join(lines)
