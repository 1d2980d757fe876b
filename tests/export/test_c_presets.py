"""Export + compile + verify the device section of every preset that has one, on tiny trained
models: C and onnxruntime against PyTorch, golden files, and the aarch64 build under qemu."""

import shutil

import numpy as np
import pytest

from ddnn.export.cexport import build, read_manifest
from ddnn.export.fileformat import read_inputs, read_outputs

from .conftest import DEVICE_PRESETS, HAS_CC, WITH_ONNX

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make"),
]


@pytest.mark.parametrize("preset", DEVICE_PRESETS)
def test_c_and_onnx_match_torch(verified, preset):
    out, report = verified[preset]
    assert report["passed"], report
    assert report["inputs"].startswith("first 16 synthetic test")
    for engine in ("c", "onnx") if "onnx" in report else ("c",):
        r = report[engine]
        assert r["decisions_identical"] and r["argmax_identical"] and r["features_ok"]
        assert r["max_logit_error"] <= 1e-4
    assert ("onnx" in report) == (preset in WITH_ONNX)
    assert report["c_ctypes_identical_to_harness"]
    assert report["harness_check"] == {"exit": 0, "output": "16 passed, 0 failed"}
    binary = read_manifest(out)["binary_features"]
    assert binary == (preset != "big-little")  # Big-Little's little net is a float net
    if binary:
        assert report["c"]["differing_feature_bits"] == 0


@pytest.mark.parametrize("preset", DEVICE_PRESETS)
def test_golden_vectors_are_written_beside_the_code(verified, preset):
    out, _ = verified[preset]
    golden = out / "golden"
    views = read_inputs(golden / "input.bin")
    expected = read_outputs(golden / "expected.bin")
    assert views.shape[0] == 16 and np.all((views >= 0) & (views <= 1))
    assert expected.logits.shape[0] == 16 and expected.features.shape[0] == 16
    for name in ("ddnn_device.c", "ddnn_device.h", "harness.c", "Makefile", "manifest.json"):
        assert (out / name).is_file()
    source = (out / "ddnn_device.c").read_text()
    assert "malloc(" not in source and "static const" in source


def test_the_aarch64_build_under_qemu_matches_the_host(verified):
    _, report = verified["ddnn"]
    cross = report["aarch64"]
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        assert "gcc-aarch64-linux-gnu qemu-user" in cross["skipped"]
        pytest.skip(cross["skipped"])
    assert cross["passed"] and cross["identical_to_host"]
    assert cross["harness_check"] == "16 passed, 0 failed"


def test_the_makefile_cross_compiles_with_an_overridden_cc(verified, tmp_path):
    out, _ = verified["ddnn"]
    text = (out / "Makefile").read_text()
    assert "$(CC)" in text and "CC =" not in text  # CC comes from make's command line / env
    assert "-std=c99" in text


@pytest.mark.parametrize("preset", ["ddnn", "big-little"])  # binary and float kernels
def test_the_generated_c_compiles_without_warnings(verified, preset):
    out, _ = verified[preset]
    build(out, ("lib",), cflags="-O2 -Werror", build_dir="werror")
    assert (out / "werror" / "libddnn_device.so").is_file()
