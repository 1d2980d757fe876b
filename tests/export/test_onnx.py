"""ONNX export: one file per section with named inputs and outputs, binarization as
Where(x >= 0, 1, -1) (never Sign), outputs equal to PyTorch for every part."""

import logging

import onnx
import pytest

from ddnn.export.onnx_export import export_onnx
from ddnn.export.verify import verify_onnx

from .conftest import HAS_CC, WITH_ONNX


@pytest.fixture(scope="module")
def exported(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    # the device files are exported and compared by the `verified` fixture (every preset)
    return out, verify_onnx(tiny_runs["ddnn-3tier"], out, samples=8, parts=["edge", "cloud"])


def test_upper_sections_equal_torch(exported):
    _, report = exported
    assert report["passed"], report
    assert [k for k in report if k != "passed"] == ["edge", "cloud"]
    assert all(report[p]["max_error"] <= 1e-4 for p in ("edge", "cloud"))


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make")
def test_device_files_equal_torch(verified):
    for preset in WITH_ONNX:
        report = verified[preset][1]["onnx"]
        assert report["passed"] and report["features_ok"] and report["decisions_identical"]


def test_names_and_binarization(exported, verified):
    out, _ = exported
    device = onnx.load(str(verified["ddnn"][0] / "onnx" / "device0.onnx"))
    edge = onnx.load(str(out / "edge.onnx"))
    assert [i.name for i in device.graph.input] == ["view"]
    assert [o.name for o in device.graph.output] == ["features", "logits"]
    assert [i.name for i in edge.graph.input] == ["inputs"]
    batch = device.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param  # dynamic batch
    ops = {n.op_type for n in device.graph.node}
    assert "Sign" not in ops and {"Where", "GreaterOrEqual"} <= ops
    meta = {p.key: p.value for p in device.metadata_props}
    assert meta["ddnn_model"].startswith("ddnn v1 device0 weights ")


def test_an_export_writes_one_self_contained_file_and_no_torchvision_notices(tiny_runs, tmp_path):
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    registry.addHandler(handler)
    try:
        [path] = export_onnx(tiny_runs["ddnn"], tmp_path, parts=["device0"])
    finally:
        registry.removeHandler(handler)
    assert [p.name for p in tmp_path.iterdir()] == ["device0.onnx"]  # no device0.onnx.data
    onnx.checker.check_model(onnx.load(str(path)))  # weights inside the file
    assert not [m for m in seen if "torchvision" in m]
