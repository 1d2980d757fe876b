"""`ddnn profile` and `ddnn plan` on tiny runs: what is measured and stored, reuse, sweep
resumption, and bad input answered in one line (or, for budgets, as an answer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ddnn.cli import main
from ddnn.emulation.calibrate import Calibration
from ddnn.emulation.profiles import load_device_profile, load_link_profile
from ddnn.errors import DdnnError
from ddnn.planning import profile as profile_module
from ddnn.planning import sweep as sweep_module
from ddnn.planning.overhead import server_paths
from ddnn.planning.predict import link_ms, predict
from ddnn.planning.profile import profile_path, profile_run
from ddnn.planning.sweep import read_sweep, train_candidates
from ddnn.store.artifact import open_model

# A device as fast as the host (its slowdown is below 1, so 1): device times are host times.
FAST = """description = "a device as fast as any host"
gflops = 100000.0
cores = 1
ram_mb = 64
source = "test"
"""
CALIBRATION = Calibration(host_gflops=100.0, measured_at="test")


@pytest.fixture()
def run(tiny_ddnn, tmp_path) -> Path:
    """A private copy: profiles are written into the run folder."""
    return Path(shutil.copytree(tiny_ddnn, tmp_path / "run"))


@pytest.fixture()
def fast(tmp_path) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text(FAST)
    return path


@pytest.mark.slow
def test_a_profile_is_measured_stored_and_reused(run, fast, monkeypatch):
    device, link = load_device_profile(fast), load_link_profile("wifi")
    p = profile_run(run, device, link, CALIBRATION, repeats=6, limit=40)
    stored = profile_path(run, device, link)
    assert stored == run / "profiles" / "fast-wifi.json"
    doc = json.loads(stored.read_text())
    assert doc["calibration"]["host_gflops"] == 100.0 and doc["device_profile"]["name"] == "fast"
    assert doc["link_profile"]["rate_mbit"] == link.rate_mbit
    # every layer of the device section, timed on the device and (for server-only) the server
    device_layers = [(t.section, t.layer) for t in p.layers if t.where == "device"]
    assert device_layers == [
        ("device", "input"), ("device", "0: bconv 32"), ("device", "1: bconv 16"),
        ("device", "exit"),
    ]  # fmt: skip
    assert {t.section for t in p.layers if t.where == "server"} == {"device", "cloud"}
    assert all(len(t.time.samples_ms) == 6 for t in p.layers)
    sections = p.section_times()
    assert [(s, w) for s, w, _ in sections] == [
        ("device", "device"), ("device", "server"), ("cloud", "server"),
    ]  # fmt: skip
    assert sections[0][2] == p.device and sections[2][2] == p.server
    assert len(p.device.samples_ms) == 6 and p.device.p95 >= p.device.median > 0
    # the ddnn preset sends 16 x 7 x 7 bits = 98 bytes; the frame, MQTT and TCP/IP add to it
    assert p.exit_bytes["device"] == 98
    assert p.split_wire.request_frame > 98 and p.split_wire.request_wire > p.split_wire.request_mqtt
    assert p.device_ram_bytes and p.device_flash_bytes
    assert [r.threshold for r in p.thresholds][:2] == [0.0, 0.025] and p.validation_samples == 40
    assert p.thresholds[-1].local_exit_fraction >= p.thresholds[0].local_exit_fraction
    # the server path: a real `ddnn serve` answered the device's features and the raw views;
    # its round trip holds the server's own time, which the reply reports
    for path in (p.split_path, p.server_only_path):
        assert len(path.round_trip.samples_ms) == len(path.server.samples_ms) == 6
        pairs = zip(path.round_trip.samples_ms, path.server.samples_ms, strict=True)
        assert all(trip > server > 0 for trip, server in pairs)

    def no_timing(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(profile_module, "time_layers", no_timing)
    assert profile_run(run, device, link, CALIBRATION, repeats=6, limit=40) == p
    with pytest.raises(AssertionError, match="measured again"):
        profile_run(run, device, link, CALIBRATION, repeats=6, remeasure=True)
    with pytest.raises(AssertionError, match="measured again"):  # other repeats: stale
        profile_run(run, device, link, CALIBRATION, repeats=7)
    pred = predict(p, link, 0.0)
    assert pred.local_exit_fraction == p.thresholds[0].local_exit_fraction


@pytest.mark.slow
def test_device_times_are_host_times_times_the_runs_slowdown(run, tmp_path, monkeypatch):
    """The profile predicts T_device by the factor `ddnn run` dilates the inference by."""
    slow = tmp_path / "slow.toml"
    slow.write_text(FAST.replace("gflops = 100000.0", "gflops = 2.0"))
    device, link = load_device_profile(slow), load_link_profile("wifi")
    host_ms = {"device": [1.0, 2.0, 3.0, 4.0, 5.0], "server": [0.5] * 5}
    cpu_ms = [0.5, 2.0, 3.0, 4.0, 5.0]  # the first sample waited 0.5 ms for a core

    def fake_layers(run_dir, where, *, repeats, idle_factor=0.0):
        assert idle_factor == (49.0 if where == "device" else 0.0)
        sections = ["device"] if where == "device" else ["device", "cloud"]
        return [
            {"section": s, "layer": "0", "samples_ms": host_ms[where], "cpu_ms": cpu_ms}
            for s in sections
        ]

    monkeypatch.setattr(profile_module, "time_layers", fake_layers)
    paced, through = {}, []

    def recording_paths(run_dir, offloads, repeats, link):
        paced.update({k: o.idle_s for k, o in offloads.items()})
        through.append(link)
        return server_paths(run_dir, offloads, repeats, link)

    monkeypatch.setattr(profile_module, "server_paths", recording_paths)
    p = profile_run(run, device, link, CALIBRATION, repeats=5, limit=20)
    assert p.slowdown == CALIBRATION.slowdown(device) == 50.0
    # as `dilated` makes a run's device take: wall + (50 - 1) x CPU, a wait is not multiplied
    assert p.device.samples_ms == (25.5, 100.0, 150.0, 200.0, 250.0)
    assert p.server.samples_ms == (0.5,) * 5  # the server runs at host speed
    # the path crosses the emulated link (its relay's delay and rate) and records its
    # arithmetic; the split's requests are paced by the device's time
    assert through == [link] and paced == {
        "server-only": 0.0,
        "device+server": pytest.approx(0.1451),
    }
    only_link = link_ms(p.server_only_wire, link.rate_mbit, link.delay_ms)
    assert p.server_only_path.link_ms == pytest.approx(only_link) and only_link > 4.0
    assert p.split_path.link_ms == pytest.approx(link_ms(p.split_wire, 25.0, 2.0))
    # what the relay's 2 ms each way costs is in the round trips
    assert min(p.server_only_path.round_trip.samples_ms) > 4.0


@pytest.mark.slow
def test_profile_and_plan_commands_answer_even_when_no_budget_is_met(run, fast, tmp_path, capsys):
    args = ["--device-profile", str(fast), "--link", "ethernet-100", "--repeats", "5"]
    assert main(["profile", str(run), *args, "--limit", "30"]) == 0
    out = capsys.readouterr().out
    assert "| device | 0: bconv 32 | device |" in out and "server-only" in out
    png = tmp_path / "plan.png"
    code = main(["plan", str(run), *args, "--max-latency-ms", "0.0001", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0 and png.stat().st_size > 0
    assert "no candidate meets the budgets" in out and "--max-latency-ms 0.0001 ms" in out
    assert main(["plan", str(run), *args, "--min-accuracy", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recommended"] is not None and doc["misses"] == []
    assert {p["mode"] for p in doc["predictions"]} == {"device+server", "server-only"}


def test_unknown_profiles_are_one_line_naming_the_known_ones(tmp_path, capsys):
    run = tmp_path / "run"  # profiles are read first: the run is never opened
    code = main(["profile", str(run), "--device-profile", "pi9", "--link", "wifi"])
    err = capsys.readouterr().err
    assert code == 2 and "pi3" in err and "pi4" in err and len(err.strip().splitlines()) == 1
    code = main(["plan", str(run), "--device-profile", "pi3", "--link", "carrier-pigeon"])
    err = capsys.readouterr().err
    assert code == 2 and "wifi" in err


SWEEP = """[sweep]
base = "ddnn"
out = "{out}"

[train]
epochs = 1
dataset = "synthetic"
limit = 64
batch_size = 32

[grid]
device_depth = [1]
filters = [4, 8]
binarized = [true]
"""


@pytest.mark.slow
def test_an_interrupted_sweep_trains_only_what_is_left(tmp_path, fast, monkeypatch, capsys):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.format(out=tmp_path / "cands"))
    candidates = read_sweep(path)
    assert [c.name for c in candidates] == ["d1-f4-bin-e1", "d1-f8-bin-e1"]
    real = sweep_module.trainer.train_experiment
    trained: list[str] = []

    def interrupted(exp, run_dir, *args, **kwargs):
        if trained:
            raise KeyboardInterrupt
        trained.append(Path(run_dir).name)
        return real(exp, run_dir, *args, **kwargs)

    monkeypatch.setattr(sweep_module.trainer, "train_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_candidates(candidates)
    assert trained == ["d1-f4-bin-e1"]

    def counting(exp, run_dir, *args, **kwargs):
        trained.append(Path(run_dir).name)
        return real(exp, run_dir, *args, **kwargs)

    monkeypatch.setattr(sweep_module.trainer, "train_experiment", counting)
    runs = train_candidates(read_sweep(path))
    assert trained == ["d1-f4-bin-e1", "d1-f8-bin-e1"]
    assert all((r / "metrics.json").is_file() for r in runs)
    assert open_model(runs[1]).spec.sections[0].layers[0].out == 8
    # planning the sweep trains nothing more and predicts every candidate
    args = ["--device-profile", str(fast), "--link", "wifi", "--repeats", "5", "--json"]
    assert main(["plan", str(path), *args]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(trained) == 2
    assert {Path(p["run"]).name for p in doc["predictions"]} == {"d1-f4-bin-e1", "d1-f8-bin-e1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\nbase = 'ddnn'\n[grid]\nfilters = [8]\n", "state the epochs"),
        ("[sweep]\nbase = 'ddnn'\n[train]\nepochs = 1\n[grid]\nwidth = [8]\n", "width"),
        ("[sweep]\nbase = 'ddnn'\n[train]\nepochs = 1\n[grid]\nfilters = [0]\n", "positive"),
        ("[sweep]\nbase = 'ddnn-multiview'\n[train]\nepochs = 1\n[grid]\n", "one device"),
    ],
)
def test_a_wrong_sweep_file_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DdnnError, match=message) as info:
        read_sweep(path)
    assert str(path) in str(info.value)
