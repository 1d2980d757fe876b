"""`--device-impl c`: the device section's time from the generated C (planning/ctime.py), its own
stored profile, the same wall/CPU composition as torch's, and the flag through `ddnn profile`,
`ddnn plan` and `ddnn bench plan`. The server path is faked where it is not the subject (a real
`ddnn serve` is tested in test_profile_and_plan.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ddnn.bench.emulated import _finished
from ddnn.bench.plan import PlanBench
from ddnn.cli import main
from ddnn.emulation.calibrate import Calibration
from ddnn.emulation.profiles import load_device_profile, load_link_profile
from ddnn.errors import DdnnError
from ddnn.export import cexport
from ddnn.planning import profile as profile_module
from ddnn.planning.ctime import C_LAYER
from ddnn.planning.profile import _dilated, profile_path, profile_run, stored_profile
from ddnn.planning.records import ServerPath, Timing
from ddnn.planning.report import profile_text
from ddnn.runtime.config import DeploymentConfig
from ddnn.runtime.executor import exit_thresholds
from ddnn.store.artifact import open_model

HAS_CC = shutil.which("cc") is not None and shutil.which("make") is not None  # as tests/export
DEVICE = """description = "a test device"
gflops = {gflops}
cores = 1
ram_mb = 64
source = "test"
"""
CALIBRATION = Calibration(host_gflops=100.0, measured_at="test")
WALL, CPU = [1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 2.0, 3.0, 4.0, 5.0]  # the first waited for a core


@pytest.fixture()
def run(tiny_ddnn, tmp_path) -> Path:
    """A private copy: profiles are written into the run folder."""
    return Path(shutil.copytree(tiny_ddnn, tmp_path / "run"))


def _device(tmp_path: Path, gflops: float) -> Path:
    path = tmp_path / f"dev{gflops:g}.toml"
    path.write_text(DEVICE.format(gflops=gflops))
    return path


@pytest.fixture()
def no_server(monkeypatch):
    """A server path of fixed times: no broker, no `ddnn serve`."""

    def paths(run_dir, offloads, repeats, link):
        return {k: ServerPath(Timing((2.0,) * repeats), Timing((1.0,) * repeats)) for k in offloads}

    monkeypatch.setattr(profile_module, "server_paths", paths)


@pytest.fixture()
def fake_timers(monkeypatch, no_server):
    """Both device timers return WALL / CPU (the C one as its one row); records the calls."""
    calls: list[tuple[str, float]] = []

    def torch_layers(run_dir, where, *, repeats, idle_factor=0.0):
        calls.append(("python" if where == "device" else "server", idle_factor))
        names = ["device"] if where == "device" else ["device", "cloud"]
        return [{"section": s, "layer": "0", "samples_ms": WALL, "cpu_ms": CPU} for s in names]

    def c_device(run_dir, section, *, repeats, idle_factor=0.0):
        calls.append(("c", idle_factor))
        return [{"section": section, "layer": C_LAYER, "samples_ms": WALL, "cpu_ms": CPU}]

    monkeypatch.setattr(profile_module, "time_layers", torch_layers)
    monkeypatch.setattr(profile_module, "time_c_device", c_device)
    return calls


def test_wall_and_cpu_compose_alike_for_any_layer_or_section():
    layer = {"section": "device", "layer": C_LAYER, "samples_ms": WALL, "cpu_ms": CPU}
    assert _dilated(layer, 50.0)["samples_ms"] == [25.5, 100.0, 150.0, 200.0, 250.0]
    assert _dilated(layer, 1.0)["samples_ms"] == WALL  # as fast as the host: its wall time


def test_each_implementation_has_its_own_stored_profile(run, tmp_path, fake_timers):
    device, link = load_device_profile(_device(tmp_path, 2.0)), load_link_profile("wifi")
    py = profile_run(run, device, link, CALIBRATION, repeats=5, limit=20)
    c = profile_run(run, device, link, CALIBRATION, repeats=5, limit=20, device_impl="c")
    assert [x[0] for x in fake_timers] == ["python", "server", "c", "server"]
    # one composition: the same host times give the same device times, idling alike (50 - 1)
    assert py.device == c.device and py.device.samples_ms == (25.5, 100.0, 150.0, 200.0, 250.0)
    assert {idle for impl, idle in fake_timers if impl != "server"} == {49.0}
    assert (py.device_impl, c.device_impl) == ("python", "c")
    assert [(t.section, t.layer) for t in c.layers if t.where == "device"] == [("device", C_LAYER)]
    assert f"| device | {C_LAYER} | device |" in profile_text(c, link) and "C agent" in (
        profile_text(c, link)
    )
    assert profile_path(run, device, link).name == "dev2-wifi.json"  # unchanged for Python
    c_file = profile_path(run, device, link, "c")
    assert (
        c_file.name == "dev2-wifi-c.json" and json.loads(c_file.read_text())["device_impl"] == "c"
    )
    # each is reused for its own implementation only
    fake_timers.clear()
    assert profile_run(run, device, link, CALIBRATION, repeats=5, device_impl="c") == c
    assert profile_run(run, device, link, CALIBRATION, repeats=5) == py
    assert fake_timers == []
    c_file.rename(profile_path(run, device, link))  # a C profile where the Python one belongs
    assert stored_profile(run, device, link, 5) is None
    # a profile of an older format (before C profiles and the linked server path) is stale
    doc = py.to_dict() | {"format": "ddnn-profile/5"}
    del doc["device_impl"]
    profile_path(run, device, link).write_text(json.dumps(doc))
    assert stored_profile(run, device, link, 5) is None
    with pytest.raises(DdnnError, match="python, c"):
        stored_profile(run, device, link, 5, device_impl="rust")


def test_no_compiler_is_one_line_saying_why(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cexport.shutil, "which", lambda tool: None)
    device, link = load_device_profile(_device(tmp_path, 2.0)), load_link_profile("wifi")
    with pytest.raises(DdnnError, match=r"C device needs it built.*'make' is not installed"):
        profile_run(run, device, link, CALIBRATION, repeats=5, device_impl="c")
    flags = ["--device-profile", str(_device(tmp_path, 2.0)), "--link", "wifi"]
    assert main(["profile", str(run), *flags, "--device-impl", "c"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_section_that_does_not_lower_to_c_is_one_line(run, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise DdnnError("layer 0: 'maxpool' has no C lowering")

    monkeypatch.setattr(cexport, "export_c", refuse)
    device, link = load_device_profile(_device(tmp_path, 2.0)), load_link_profile("wifi")
    with pytest.raises(DdnnError, match=r"does not lower to C.*--device-impl python.*maxpool"):
        profile_run(run, device, link, CALIBRATION, repeats=5, device_impl="c")


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make")
def test_the_c_device_is_much_faster_than_torch_on_the_same_run(run, tmp_path, no_server):
    """Timed for real at host speed (a device faster than the host: slowdown 1)."""
    device, link = load_device_profile(_device(tmp_path, 1e5)), load_link_profile("wifi")
    py = profile_run(run, device, link, CALIBRATION, repeats=30, limit=20)
    c = profile_run(run, device, link, CALIBRATION, repeats=30, limit=20, device_impl="c")
    assert len(c.device.samples_ms) == 30 and c.device.median > 0
    # torch pays Python and dispatch per layer; a generous bound on a busy host
    assert c.device.median < py.device.median / 3


def test_the_flag_reaches_profile_plan_and_bench_plan(
    run, tmp_path, fake_timers, monkeypatch, capsys
):
    flags = ["--device-profile", str(_device(tmp_path, 2.0)), "--link", "wifi", "--repeats", "5"]
    assert main(["profile", str(run), *flags, "--limit", "20", "--device-impl", "c", "--json"]) == 0
    assert (run / "profiles" / "dev2-wifi-c.json").is_file()
    assert main(["plan", str(run), *flags, "--device-impl", "c", "--json"]) == 0
    assert [x[0] for x in fake_timers] == ["c", "server"]  # the plan reused the C profile
    given: dict = {}

    def fake_bench(candidates, out_dir, **kwargs):
        given.update(kwargs)
        return PlanBench("dev2", "wifi", None, (), {}, kwargs["device_impl"])

    monkeypatch.setattr("ddnn.bench.plan.bench_plan", fake_bench)
    args = ["bench", "plan", str(run), *flags, "--device-impl", "c", "--out", str(tmp_path)]
    assert main([*args, "--json"]) == 0 and given["device_impl"] == "c"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["device_impl"] == "c"


def test_a_finished_run_is_reused_for_its_own_implementation_only(run, tmp_path):
    stored = open_model(run)
    config = DeploymentConfig(devices=1, samples=3, mode="device+server", thresholds=(0.5,),
                              device_profile="pi3", link="wifi")  # fmt: skip
    report = {
        "model": stored.name, "version": stored.version, "samples_requested": 3,
        "thresholds": exit_thresholds(stored.spec, (0.5,)),
        "emulation": {"device_profile": asdict(load_device_profile("pi3")),
                      "link_profile": asdict(load_link_profile("wifi"))},
    }  # fmt: skip
    (tmp_path / "records-device+server.jsonl").write_text("")
    (tmp_path / "report.json").write_text(json.dumps(report))  # before C agents: Python's
    assert _finished(run, tmp_path, config) == report
    assert _finished(run, tmp_path, replace(config, device_impl="c")) is None
    (tmp_path / "report.json").write_text(json.dumps(report | {"device_impl": "c"}))
    assert _finished(run, tmp_path, replace(config, device_impl="c")) is not None
    assert _finished(run, tmp_path, config) is None
