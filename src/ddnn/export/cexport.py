"""`export_c`: write the C code of a stored model's device section, and build it with make."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

from ddnn.errors import DdnnError
from ddnn.export.csource import ExitRule, generate
from ddnn.export.harness import ENTROPY_ATOL, HARNESS_C, LOGIT_RTOL, MAKEFILE
from ddnn.export.ir import check_device, lower_device
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LIBRARY = "libddnn_device.so"
HARNESS = "ddnn_harness"


def model_id(run_dir: str | Path, device: int) -> str:
    """Names the exact weights a build came from, so a stale build is noticed."""
    return open_model(run_dir).part_id(f"device{device}")


def exit_rule(model: HierarchicalModel) -> ExitRule | None:
    """The device exit's decision rule, from the spec's calibrated thresholds."""
    dev = model.spec.device_section
    if dev is None or dev.exit is None:
        return None
    thresholds = model.spec.thresholds
    classes = dev.exit.classes
    return ExitRule(
        threshold=float(thresholds.get(dev.name, 1.0)),
        final=dev.name not in thresholds,
        class_map=tuple(classes) if classes else tuple(range(model.spec.num_classes)),
        other=len(classes) if classes else -1,
    )


def load_device_model(run_dir: str | Path, device: int) -> HierarchicalModel:
    """The model with only device `device`'s weights loaded (all a device ever gets)."""
    stored = open_model(run_dir)
    check_device(stored.load(parts=[]), device)
    return stored.load(parts=[f"device{device}"])


def export_c(run_dir: str | Path, out_dir: str | Path, device: int = 0) -> Path:
    """Write ddnn_device.{h,c}, harness.c, Makefile and manifest.json for device section
    `device` of the model stored in `run_dir`; returns `out_dir`."""
    model = load_device_model(run_dir, device)
    low = lower_device(model, device)
    ident = model_id(run_dir, device)
    src = generate(low, exit_rule(model), ident)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddnn_device.h").write_text(src.header)
    (out / "ddnn_device.c").write_text(src.source)
    (out / "harness.c").write_text(HARNESS_C)
    (out / "Makefile").write_text(MAKEFILE)
    c, h, w = low.body[0].in_shape
    manifest = {
        "model": ident,
        "run_dir": str(Path(run_dir).resolve()),
        "device": device,
        "input_shape": [c, h, w],
        "num_logits": low.num_logits,
        "binary_features": low.binary_features,
        "feature_shape": list(low.feature_shape),
        "exit": asdict(rule) if (rule := exit_rule(model)) else None,
        "footprint": asdict(src.footprint),
        "tolerance": {"logit_rtol": LOGIT_RTOL, "entropy_atol": ENTROPY_ATOL},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("wrote C for %s to %s (%s)", ident, out, src.footprint)
    return out


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DdnnError(f"{out_dir} has no {MANIFEST}: run `ddnn export RUN_DIR --target c` first")
    return json.loads(path.read_text())


def build(
    out_dir: str | Path,
    targets: tuple[str, ...] = ("all",),
    cc: str = "cc",
    cflags: str | None = None,
    ldflags: str | None = None,
    build_dir: str = ".",
) -> Path:
    """Run the generated Makefile; returns the folder holding the binaries."""
    for tool in ("make", cc):
        if shutil.which(tool) is None:
            raise DdnnError(f"{tool!r} is not installed: install it (Debian: make, gcc) to build")
    cmd = ["make", "-s", "-C", str(out_dir), *targets, f"CC={cc}", f"OUT={build_dir}"]
    cmd += [f"CFLAGS={cflags}"] if cflags is not None else []
    cmd += [f"LDFLAGS={ldflags}"] if ldflags is not None else []
    log.info("building: %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DdnnError(f"building the C code failed ({' '.join(cmd)}):\n{result.stderr.strip()}")
    if result.stderr.strip():
        log.warning("compiler warnings:\n%s", result.stderr.strip())
    return Path(out_dir) / build_dir
