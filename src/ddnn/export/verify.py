"""`verify`: the generated C and the ONNX file against PyTorch on K samples, plus golden files.

Agreement means: logits within LOGIT_RTOL of max(1, max |torch logit|) per sample, entropy within
ENTROPY_ATOL, identical exit decisions and argmax, and bit-identical packed features (float
features: within the logit tolerance). Binary layers fed binary values are exact integers in C,
so once the first layer's bits agree everything after is exact; float layers differ only by
summation order.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddnn.errors import DdnnError
from ddnn.export.cexport import HARNESS, build, export_c, read_manifest
from ddnn.export.engines import CEngine, OnnxEngine, TorchEngine
from ddnn.export.fileformat import DeviceResults, read_outputs, write_inputs, write_outputs
from ddnn.export.harness import ENTROPY_ATOL, LOGIT_RTOL
from ddnn.model.hierarchy import Section
from ddnn.model.views import device_view
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)

CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"


def sample_views(run_dir: str | Path, device: int, count: int) -> tuple[np.ndarray, str]:
    """[K, C, h, w] inputs for device `device`: the first K test samples of the dataset the
    model was trained on, or random values in [0, 1] when it is not available (and why)."""
    stored = open_model(run_dir)
    spec, source = stored.spec, stored.data
    reason = "the model's spec.json records no dataset"
    if source is not None:
        name = source.dataset
        try:
            data = source.load(val_fraction=0.0)
            x, _ = next(data.test.head(count).batches(count))
            views = device_view(x, spec, device).numpy()
            return np.ascontiguousarray(views, dtype=np.float32), f"first {len(views)} {name} test"
        except DdnnError as exc:
            reason = f"dataset {name} is not available ({exc})"
    log.warning("verify uses random inputs: %s", reason)
    rng = np.random.default_rng(0)
    views = rng.random((count, *spec.view_shape), dtype=np.float32)
    return views, f"{count} random inputs in [0, 1], because {reason}"


def compare(ref: DeviceResults, got: DeviceResults) -> dict[str, Any]:
    """How far `got` is from the reference, and whether it is within the stated tolerances."""
    scale = np.maximum(1.0, np.abs(ref.logits).max(axis=1, initial=0.0))  # [N]
    logit_err = np.abs(got.logits - ref.logits).max(axis=1, initial=0.0) / scale  # [N]
    if ref.binary:
        diff_bits = np.unpackbits(got.features ^ ref.features, axis=1).sum()
        features_ok = bool(diff_bits == 0)
        feature_err = float(diff_bits)
    else:
        a, b = got.features.view(np.float32), ref.features.view(np.float32)
        fscale = np.maximum(1.0, np.abs(b).max(axis=1, initial=0.0))
        feature_err = float((np.abs(a - b).max(axis=1, initial=0.0) / fscale).max(initial=0.0))
        features_ok = feature_err <= LOGIT_RTOL
    entropy_err = float(np.abs(got.entropy - ref.entropy).max(initial=0.0))
    result = {
        "max_logit_error": float(logit_err.max(initial=0.0)),
        "max_entropy_error": entropy_err,
        "decisions_identical": bool(np.array_equal(got.decision, ref.decision)),
        "argmax_identical": bool(np.array_equal(got.argmax, ref.argmax)),
        ("differing_feature_bits" if ref.binary else "max_feature_error"): feature_err,
        "features_ok": features_ok,
        "local_exits": int((got.decision >= 0).sum()),
    }
    result["passed"] = bool(
        result["max_logit_error"] <= LOGIT_RTOL
        and entropy_err <= ENTROPY_ATOL
        and result["decisions_identical"]
        and result["argmax_identical"]
        and features_ok
    )
    return result


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)


def _harness(folder: Path, build_dir: str, inputs: Path, out: Path, prefix: list[str]) -> None:
    result = _run([*prefix, str(folder / build_dir / HARNESS), str(inputs), str(out)])
    if result.returncode != 0:
        raise DdnnError(f"the harness failed: {result.stderr.strip()}")


def cross_check(folder: Path, inputs: Path, host: DeviceResults) -> dict[str, Any]:
    """Build the harness for aarch64, run it under qemu and compare with the host's results."""
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        return {
            "skipped": f"{' and '.join(missing)} not installed "
            "(Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)"
        }
    build(folder, ("harness",), cc=CROSS_CC, ldflags="-static", build_dir="build-aarch64")
    out = folder / "golden" / "aarch64.bin"
    _harness(folder, "build-aarch64", inputs, out, [QEMU])
    got = read_outputs(out)
    check = _run([QEMU, str(folder / "build-aarch64" / HARNESS), "--check",
                  str(folder / "golden" / "expected.bin"), str(inputs)])  # fmt: skip
    return {
        "target": "aarch64 (static, run under qemu-aarch64)",
        "identical_to_host": (folder / "golden" / "host.bin").read_bytes() == out.read_bytes(),
        "vs_host": compare(host, got),
        "harness_check": check.stdout.strip() or check.stderr.strip(),
        "passed": compare(host, got)["passed"] and check.returncode == 0,
    }


def verify(
    run_dir: str | Path,
    out_dir: str | Path,
    samples: int = 16,
    device: int = 0,
    onnx: bool = True,
    cross: bool = True,
) -> dict[str, Any]:
    """Export, compile (cc) and run the C on `samples` inputs, run onnxruntime on them, compare
    both with PyTorch, and write golden vectors to out_dir/golden. Returns the report."""
    if samples < 1:
        raise DdnnError(f"samples must be >= 1, got {samples}")
    folder = export_c(run_dir, out_dir, device)
    build(folder)
    views, source = sample_views(run_dir, device, samples)
    golden = folder / "golden"
    golden.mkdir(exist_ok=True)
    inputs = write_inputs(golden / "input.bin", views)
    torch_engine = TorchEngine(run_dir, device)
    ref = torch_engine.results(views)
    write_outputs(golden / "expected.bin", ref)
    _harness(folder, ".", inputs, golden / "host.bin", [])
    host = read_outputs(golden / "host.bin")
    check = _run([str(folder / HARNESS), "--check", str(golden / "expected.bin"), str(inputs)])
    c_ctypes = CEngine(run_dir, device, artifacts=folder).results(views)
    report: dict[str, Any] = {
        "model": read_manifest(folder)["model"],
        "inputs": source,
        "samples": len(views),
        "tolerance": {
            "logits": f"|c - torch| <= {LOGIT_RTOL} x max(1, max |torch logit|) per sample",
            "entropy": f"|c - torch| <= {ENTROPY_ATOL}",
            "decisions": "identical",
            "features": "bit-identical" if ref.binary else f"as logits ({LOGIT_RTOL})",
        },
        "c": compare(ref, host),
        "c_ctypes_identical_to_harness": bool(
            np.array_equal(c_ctypes.logits, host.logits)
            and np.array_equal(c_ctypes.features, host.features)
        ),
        "harness_check": {"exit": check.returncode, "output": check.stdout.strip()},
        "golden": {
            "input": str(inputs),
            "expected": str(golden / "expected.bin"),
            "c_output": str(golden / "host.bin"),
        },
        "footprint": read_manifest(folder)["footprint"],
    }
    if onnx:
        engine = OnnxEngine(run_dir, device, artifacts=folder / "onnx")
        report["onnx"] = compare(ref, engine.results(views))
    report["aarch64"] = cross_check(folder, inputs, host) if cross else {"skipped": "not requested"}
    report["passed"] = bool(
        report["c"]["passed"]
        and report["c_ctypes_identical_to_harness"]
        and check.returncode == 0
        and report.get("onnx", {"passed": True})["passed"]
        and report["aarch64"].get("passed", True)
    )
    log.info("verify %s: %s", report["model"], "passed" if report["passed"] else "FAILED")
    return report


@torch.no_grad()
def verify_onnx(
    run_dir: str | Path,
    out_dir: str | Path,
    samples: int = 16,
    parts: list[str] | None = None,
) -> dict[str, Any]:
    """Export every part (or `parts`) to ONNX and compare each with PyTorch on the inputs it
    really gets: the devices on their views, the upper sections on the fused inputs PyTorch
    feeds them (captured with forward pre-hooks while the whole model runs)."""
    import onnxruntime as ort

    from ddnn.export.onnx_export import export_onnx

    model = open_model(run_dir).load()
    views = np.stack(
        [sample_views(run_dir, d, samples)[0] for d in range(max(len(model.devices), 1))], axis=1
    )  # [K, D, C, h, w]
    captured: dict[str, Tensor] = {}

    def grab(name: str) -> Any:
        def hook(module: Any, args: tuple[Tensor, ...]) -> None:
            captured[name] = args[0]

        return hook

    handles = [s.register_forward_pre_hook(grab(n)) for n, s in model.upper.items()]
    try:
        model(torch.from_numpy(views))
    finally:
        for h in handles:
            h.remove()
    report: dict[str, Any] = {}
    for path in export_onnx(run_dir, out_dir, parts):
        part = path.stem
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if part.startswith("device"):
            x = torch.from_numpy(views[:, int(part[6:])])
            ref = model.run_device(int(part[6:]), x)
        else:
            section: Section = model.upper[part]  # type: ignore[assignment]
            x = captured[part]
            ref = section(x)
            if section.spec.input == "raw":  # the graph takes the view in [0, 1]
                x = x * model.spec.std + model.spec.mean
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        want = [ref.features] + ([ref.logits] if ref.logits is not None else [])
        errors = [
            float(np.abs(g - w.numpy()).max() / max(1.0, float(w.abs().max())))
            for g, w in zip(got, want, strict=True)
        ]
        report[part] = {
            "file": str(path),
            "max_error": max(errors),
            "passed": max(errors) <= LOGIT_RTOL,
        }
    report["passed"] = all(r["passed"] for r in report.values() if isinstance(r, dict))
    return report


def verify_text(report: dict[str, Any]) -> str:
    """A short human summary of verify()'s report."""
    lines = [f"{report['model']}: {report['samples']} samples ({report['inputs']})"]
    for name in ("c", "onnx"):
        if name in report:
            r = report[name]
            lines.append(
                f"  {name:5s} {'ok' if r['passed'] else 'FAILED'}: max logit error "
                f"{r['max_logit_error']:.2e} (tolerance {LOGIT_RTOL:g} of scale), decisions "
                f"{'identical' if r['decisions_identical'] else 'DIFFER'}, features "
                f"{'identical' if r['features_ok'] else 'DIFFER'}, {r['local_exits']} local exits"
            )
    lines.append(f"  harness --check: {report['harness_check']['output']}")
    cross = report["aarch64"]
    lines.append(
        f"  aarch64: skipped ({cross['skipped']})"
        if "skipped" in cross
        else f"  aarch64 under qemu: {'ok' if cross['passed'] else 'FAILED'}, "
        f"{'bit-identical to' if cross['identical_to_host'] else 'differs from'} the host, "
        f"--check: {cross['harness_check']}"
    )
    lines.append(f"  golden vectors: {Path(report['golden']['input']).parent}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)
