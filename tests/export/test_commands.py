"""`ddnn export` and `ddnn bench device` through ddnn.cli.main, with this area added to AREAS the
way the lead will wire it."""

import json
import shutil

import pytest

import ddnn.cli
from ddnn.cli import main

from .conftest import HAS_CC


@pytest.fixture(autouse=True)
def export_area(monkeypatch):
    monkeypatch.setattr(ddnn.cli, "AREAS", ("ddnn.export.cli",))


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make")
def test_export_c_with_verify(verified, tiny_runs, tmp_path, capsys):
    out = tmp_path / "c"
    shutil.copytree(verified["ddnn"][0] / "onnx", out / "onnx")  # skip re-exporting
    argv = ["export", str(tiny_runs["ddnn"]), "--target", "c", "--out", str(out),
            "--verify", "--samples", "4", "--no-cross"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "PASSED" in text and "decisions identical" in text and "aarch64: skipped" in text
    assert (out / "golden" / "expected.bin").is_file()


def test_export_c_without_verify_needs_no_compiler(tiny_runs, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["export", str(tiny_runs["ddnn"]), "--target", "c", "--out", str(out)]) == 0
    assert "make -C" in capsys.readouterr().out
    assert (out / "ddnn_device.h").is_file() and not (out / "ddnn_harness").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "/no/such/run", "--target", "c", "--out", "x"], "not a folder"),
        (["export", "{ddnn}", "--target", "c", "--out", "x", "--device", "1"], "device index"),
        (["export", "{ddnn}", "--target", "c", "--out", "x", "--samples", "0"], "--samples"),
        (["bench", "device", "nosuch"], "neither a run folder"),
    ],
)
def test_user_mistakes_are_one_line_errors(tiny_runs, argv, message, capsys):
    argv = [a.replace("{ddnn}", str(tiny_runs["ddnn"])) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make")
def test_bench_device_reports_every_engine_and_memory(verified, tiny_runs, tmp_path, capsys):
    shutil.copytree(verified["ddnn"][0] / "onnx", tmp_path / "onnx")  # skip re-exporting
    argv = ["bench", "device", str(tiny_runs["ddnn"]), "--repeats", "20", "--out",
            str(tmp_path), "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["latency_ns"]) == {"torch", "onnxruntime", "c", "c_ctypes"}
    assert all(v > 0 for v in result["latency_ns"].values())
    assert "c / onnxruntime" in result["ratios"]
    convs = result["convolutions"]
    assert [c["input"].split()[0] for c in convs] == ["float", "binary"]
    assert all(c["float_weights_bytes"] == 32 * c["weights_bytes"] for c in convs)
    mem = result["memory"]
    assert mem["weight_bytes"] > 0 and mem["activation_bytes"] > 0 and mem["feature_bytes"] == 98
