"""The harness: a malformed input file is rejected with a clear message and exit status 2; a
result that differs from the golden one makes --check exit 1."""

import re
import subprocess

import numpy as np
import pytest

from ddnn.export.fileformat import INPUT_MAGIC, write_inputs

from .conftest import HAS_CC

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make"),
]


@pytest.fixture(scope="module")
def built(verified):
    out, _ = verified["ddnn"]
    return out


def _harness(out, *args):
    return subprocess.run(
        [str(out / "ddnn_harness"), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def _header(count: int, values: int) -> bytes:
    return INPUT_MAGIC + np.array([count, values], "<u4").tobytes()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"NOTDDNN!" + bytes(8 + 784 * 4), "not a ddnn input file (bad magic: expected DDNNIN01)"),
        (b"DDNN", "4 bytes: too short for the 16-byte header"),
        (_header(2, 784) + bytes(784 * 4), "header announces 2 samples of 784 float32"),
        (_header(1, 783) + bytes(783 * 4), "samples have 783 values; this model needs 784"),
        (_header(0, 784), "the file holds no samples"),
    ],
)
def test_a_malformed_input_file_is_rejected_clearly(built, tmp_path, content, message):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(content)
    result = _harness(built, bad, tmp_path / "out.bin")
    assert result.returncode == 2
    assert message in result.stderr and str(bad) in result.stderr
    assert not (tmp_path / "out.bin").exists()


def test_a_missing_file_and_bad_usage_are_reported(built, tmp_path):
    result = _harness(built, tmp_path / "nope.bin", tmp_path / "out.bin")
    assert result.returncode == 2 and "cannot read the file" in result.stderr
    result = _harness(built, "--bogus", "x", "y")
    assert result.returncode == 2 and "usage: ddnn_harness" in result.stderr


def test_check_fails_when_the_results_differ(built, tmp_path):
    golden = built / "golden"
    assert _harness(built, "--check", golden / "expected.bin", golden / "input.bin").returncode == 0
    other = write_inputs(tmp_path / "other.bin", np.zeros((16, 1, 28, 28), np.float32))
    result = _harness(built, "--check", golden / "expected.bin", other)
    assert result.returncode == 1 and "differs from the expected results" in result.stderr


def test_time_prints_a_median(built):
    result = _harness(built, "--time", 50, built / "golden" / "input.bin")
    assert result.returncode == 0 and "median_ns=" in result.stdout


def test_time_prints_each_runs_wall_and_cpu_time_and_can_idle_between_runs(built):
    result = _harness(built, "--time", 20, built / "golden" / "input.bin", 2.5)
    runs = re.findall(r"^run wall_ns=(\d+) cpu_ns=(\d+)$", result.stdout, re.MULTILINE)
    assert result.returncode == 0 and len(runs) == 20 and all(int(w) > 0 for w, _ in runs)
    bad = _harness(built, "--time", 20, built / "golden" / "input.bin", "-1")
    assert bad.returncode == 2 and "IDLE" in bad.stderr
