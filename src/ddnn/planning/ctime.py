"""The device section's time as the generated C runs it (`ddnn run --device-impl c`).

The C agent runs the section as one call, `ddnn_device_run`, built by the generated Makefile
with its default flags; so the profile exports the section (export/cexport.py), builds the
harness from the same sources and flags, and times that call inside the harness
(export/bench.py `harness_samples`: per run, monotonic wall time and thread CPU time). The
result has the shape of a torch timing child's layer (planning/timer.py), one row for the whole
section, so the profile composes it with the same `_dilated` (wall + (slowdown - 1) x CPU) the
agent's dilation (agent/c/ddnn_dilate.c) makes a run take.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

C_LAYER = "C: whole section"  # the one row of a C profile's device section


def time_c_device(
    run_dir: str | Path, section: str, *, repeats: int, idle_factor: float = 0.0
) -> list[dict[str, Any]]:
    """[{section, layer, samples_ms, cpu_ms}]: one row, the generated C of device section 0
    timed `repeats` times on one random sample (values do not change the work), idling
    `idle_factor` x each run's CPU time after it as the dilated agent sleeps between samples.
    A DdnnError when the section does not lower to C or no compiler is installed."""
    from ddnn.export.bench import harness_samples
    from ddnn.export.cexport import build, export_c, read_manifest
    from ddnn.export.fileformat import write_inputs

    with tempfile.TemporaryDirectory(prefix="ddnn_ctime_") as tmp:
        try:
            folder = export_c(run_dir, Path(tmp) / "c", 0)
        except DdnnError as exc:
            raise DdnnError(
                f"{run_dir}: the device section does not lower to C, so there is no C device "
                f"to profile (use --device-impl python): {exc}"
            ) from exc
        try:  # the Makefile's default flags, as the agent is built
            build(folder, ("harness",))
        except DdnnError as exc:
            raise DdnnError(f"profiling the C device needs it built: {exc}") from exc
        shape = read_manifest(folder)["input_shape"]
        view = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
        inputs = write_inputs(Path(tmp) / "input.bin", view)
        wall, cpu = harness_samples(folder, inputs, repeats, idle_factor)
    log.info("timed the C device section of %s: median %.3f ms", run_dir, np.median(wall) / 1e6)
    return [
        {"section": section, "layer": C_LAYER, "samples_ms": [w / 1e6 for w in wall],
         "cpu_ms": [c / 1e6 for c in cpu]}
    ]  # fmt: skip
