"""CPU quotas: a child under cpu_limited runs at the quota's speed; the cgroup goes on exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ddnn.emulation.cpu import CpuControl, cpu_limited

SPIN = (
    "import time\n"
    "wall = time.perf_counter(); cpu = time.process_time()\n"
    "while time.process_time() - cpu < 0.1: pass\n"
    "print(time.perf_counter() - wall)\n"
)


def _control() -> CpuControl:
    control = CpuControl.detect()
    if os.geteuid() != 0 or control.kind == "none":
        pytest.skip(f"needs root and a cgroup cpu controller ({control.why or 'not root'})")
    return control


def test_a_child_under_a_quota_runs_that_much_slower_and_the_cgroup_goes():
    control = _control()
    name = f"ddnn-test-{os.getpid()}"
    with cpu_limited(0.25, name) as enter:
        assert enter is not None
        done = subprocess.run(
            [sys.executable, "-c", SPIN], preexec_fn=enter, capture_output=True, text=True
        )
    wall = float(done.stdout)
    assert wall > 0.1 / 0.25 * 0.7  # 0.1 s of CPU at a quarter core: about 0.4 s of wall time
    assert control.root is not None and not (control.root / name).exists()


def test_a_quota_changes_live_and_lifts():
    control = _control()
    path = control.create(f"ddnn-test-{os.getpid()}-live", 0.5)
    assert path is not None
    try:
        control.set_cores(path, 0.02)  # a longer period below 10 % of a core
        control.set_cores(path, None)
        control.set_cores(path, 0.3)
    finally:
        assert CpuControl.remove(path)
