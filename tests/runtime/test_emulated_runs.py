"""`ddnn run --device-profile P --link L`: the devices run emulated, and the report says under
which profiles, which calibration, and what was not emulated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ddnn.agent.build import check_libmosquitto
from ddnn.emulation.cpu import CpuControl
from ddnn.errors import DdnnError
from ddnn.runtime.config import DeploymentConfig
from ddnn.runtime.protocol import DEVICE_SERVER
from ddnn.runtime.runner import run_deployment


def test_an_unknown_profile_lists_the_known_ones_before_anything_starts():
    with pytest.raises(DdnnError, match=r"unknown device profile 'pi9'; known: .*pi4"):
        DeploymentConfig(device_profile="pi9")
    with pytest.raises(DdnnError, match=r"unknown link profile 'adsl'; known: .*lte"):
        DeploymentConfig(link="adsl")


def test_a_secure_run_over_an_emulated_link_is_refused_with_the_reason():
    with pytest.raises(DdnnError, match="TLS certificate"):
        DeploymentConfig(secure=True, link="wifi")


@pytest.mark.integration
@pytest.mark.slow
def test_an_emulated_run_reports_its_profiles_calibration_and_notes(tiny_ddnn, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and cgroups")
    config = DeploymentConfig(
        samples=8, mode="device+server", workers=1, device_profile="pi4", link="wifi"
    )
    report = run_deployment(tiny_ddnn, tmp_path / "out", config)
    emulation = report["emulation"]
    assert emulation["device_profile"]["name"] == "pi4"
    assert emulation["link_profile"]["name"] == "wifi"
    assert emulation["calibration"]["host_gflops"] > 0
    assert emulation["slowdown"] > 1  # the device's inference is dilated to pi4's speed
    assert emulation["quota_cores"] is None  # and nothing else: no CPU quota during the run
    assert any("dilated" in note for note in emulation["notes"])
    assert any("not emulated" in note for note in emulation["notes"])
    assert report["configurations"]["device+server"]["samples"] == 8
    stored = json.loads((tmp_path / "out" / "report.json").read_text())
    assert stored["emulation"]["link_profile"]["delay_ms"] == 2.0
    assert "emulated devices:" in (tmp_path / "out" / "report.md").read_text()
    assert_nothing_left(os.getpid())


def assert_nothing_left(pid: int) -> None:
    """No namespace, veth or cgroup of the emulation run by process `pid` is left."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"ddnn-emu-{pid}-" not in namespaces and f"dde{pid}h" not in links
    root = CpuControl.detect().root
    assert root is None or not list(root.glob(f"ddnn-emu-{pid}-*"))


@pytest.mark.integration
@pytest.mark.slow
def test_the_c_agent_runs_emulated_with_its_inference_dilated(tiny_ddnn, tmp_path):
    """`ddnn run --device-impl c --device-profile P --link L`: the agent gets the slowdown as
    the Python device does and its device times grow by about that factor."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and cgroups")
    try:
        check_libmosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    plain = DeploymentConfig(devices=1, samples=12, mode=DEVICE_SERVER, workers=1, device_impl="c")
    host = run_deployment(tiny_ddnn, tmp_path / "host", plain)
    emulated = replace(plain, device_profile="pi3", link="wifi")
    report = run_deployment(tiny_ddnn, tmp_path / "emu", emulated)
    assert report["device_impl"] == "c" and report["emulation"]["link_profile"]["name"] == "wifi"
    log = tmp_path / "emu" / "logs" / f"device-{DEVICE_SERVER}-dev0.log"
    assert "ddnn_agent: dev0" in log.read_text()  # the C agent was the device
    slowdown = report["emulation"]["slowdown"]
    p50 = [r["configurations"][DEVICE_SERVER]["time_ms"]["device"]["p50"] for r in (host, report)]
    assert slowdown / 3 < p50[1] / p50[0] < slowdown * 3, (p50, slowdown)  # loosely: shared host
    assert report["configurations"][DEVICE_SERVER]["samples"] == 12
    assert_nothing_left(os.getpid())


@pytest.mark.integration
@pytest.mark.slow
def test_ctrl_c_during_an_emulated_run_leaves_nothing_behind(tiny_ddnn, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and cgroups")
    argv = [
        sys.executable, "-m", "ddnn.cli", "run", str(tiny_ddnn), "--samples", "400",
        "--rate", "5", "--mode", "device+server", "--workers", "1", "--device-profile", "pi4",
        "--link", "wifi", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    namespace = f"ddnn-emu-{run.pid}-0"
    deadline = time.monotonic() + 240
    inside: list[str] = []
    while not inside and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        inside = pids.stdout.split()  # the device process has started in its namespace
    assert inside, "the emulated device never started"
    time.sleep(1.0)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) != 0
    assert_nothing_left(run.pid)
    for pid in inside:  # gone, or a zombie waiting for init
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
