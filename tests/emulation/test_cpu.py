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


def test_without_a_cpu_controller_it_warns_in_one_line_and_yields_none(monkeypatch, caplog):
    monkeypatch.setattr(CpuControl, "detect", staticmethod(lambda: CpuControl("none", None, "x")))
    with cpu_limited(0.5, "ddnn-test-none") as enter:
        assert enter is None
    assert "CPU quota NOT applied: x" in caplog.text


def test_an_emulated_device_runs_at_its_quota_and_limit_cpu_lifts_it():
    _control()
    from ddnn.emulation.calibrate import Calibration
    from ddnn.emulation.profiles import DeviceProfile
    from ddnn.emulation.session import EmulatedDevices

    board = DeviceProfile("quarter", "a quarter of this host's core", 25.0, 1, 64, "test")
    emu = EmulatedDevices(
        1, broker=("127.0.0.1", 1), device=board, calibration=Calibration(host_gflops=100.0)
    )  # fmt: skip

    def spin() -> float:
        proc = emu.popen(0, [sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
        return float(proc.communicate(timeout=60)[0])

    def throttled_periods() -> int:
        path = emu.cgroup(0)
        assert path is not None
        stat = dict(line.split() for line in (path / "cpu.stat").read_text().splitlines())
        return int(stat["nr_throttled"])

    with emu:
        assert emu.quota_cores == 0.25
        assert spin() > 0.1 / 0.25 * 0.7  # 0.1 s of CPU at a quarter core
        before = throttled_periods()
        assert before > 0
        emu.limit_cpu(False)
        spin()  # wall time says little on a busy host: the kernel's count says it was free
        assert throttled_periods() == before


def test_a_dilated_block_takes_slowdown_times_its_cpu_time(monkeypatch):
    import time

    from ddnn.emulation.cpu import SLOWDOWN_ENV, dilated, slowdown_from_env

    def busy(seconds: float) -> None:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    start = time.perf_counter()
    with dilated(4.0):
        busy(0.02)
    assert time.perf_counter() - start >= 0.02 * 4 * 0.95  # 20 ms of CPU, then 60 ms asleep
    monkeypatch.setenv(SLOWDOWN_ENV, "55.5")
    assert slowdown_from_env() == 55.5
    monkeypatch.setenv(SLOWDOWN_ENV, "0.5")  # faster than the host: nothing to dilate
    assert slowdown_from_env() is None
    monkeypatch.delenv(SLOWDOWN_ENV)
    assert slowdown_from_env() is None
