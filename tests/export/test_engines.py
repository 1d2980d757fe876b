"""Device engines: one interface, one registry; torch, onnx and c agree on a batch."""

import numpy as np
import pytest

from ddnn.errors import DdnnError
from ddnn.export import create_engine, engine_names
from ddnn.export.bits import unpack_features

from .conftest import HAS_CC


def test_an_unknown_engine_lists_the_valid_ones(tiny_runs):
    with pytest.raises(DdnnError, match="unknown engine 'tflite'; valid: c, onnx, torch"):
        create_engine("tflite", tiny_runs["ddnn"])
    assert engine_names() == ["c", "onnx", "torch"]


def test_torch_engine_checks_the_view_shape(tiny_runs):
    engine = create_engine("torch", tiny_runs["ddnn-multiview"], device=1)
    with pytest.raises(DdnnError, match=r"add the batch dimension"):
        engine.run(np.zeros((1, 20, 20), np.float32))
    with pytest.raises(DdnnError, match=r"expects \[B, 1, 20, 20\]"):
        engine.run(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(DdnnError, match="has 4 device"):
        create_engine("torch", tiny_runs["ddnn-multiview"], device=4)


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make")
@pytest.mark.parametrize("preset", ["ddnn", "big-little"])
def test_engines_agree(verified, tiny_runs, preset):
    out, _ = verified[preset]
    run = tiny_runs[preset]
    views = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    engines = {
        "torch": create_engine("torch", run),
        "onnx": create_engine("onnx", run, artifacts=out / "onnx"),
        "c": create_engine("c", run, artifacts=out),
    }
    results = {name: e.run(views) for name, e in engines.items()}
    ref_logits, ref_feats = results["torch"]
    for name, (logits, feats) in results.items():
        assert logits.shape == (5, engines[name].num_logits) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
        if engines[name].binary_features:  # packed bits: identical
            assert feats.dtype == np.uint8 and np.array_equal(feats, ref_feats)
            assert set(np.unique(unpack_features(feats, engines[name].feature_shape))) <= {-1, 1}
        else:
            assert feats.shape == (5, *engines[name].feature_shape)
            np.testing.assert_allclose(feats, ref_feats, atol=1e-4)


@pytest.mark.integration
@pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make")
def test_c_engine_builds_on_first_use_and_rebuilds_when_stale(tiny_runs, tmp_path):
    run = tiny_runs["ddnn"]
    engine = create_engine("c", run, artifacts=tmp_path / "c")
    assert (tmp_path / "c" / "libddnn_device.so").is_file()
    manifest = tmp_path / "c" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"model": "ddnn', '"model": "stale'))
    again = create_engine("c", run, artifacts=tmp_path / "c")  # rebuilt, loaded afresh
    views = np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(engine.run(views)[1], again.run(views)[1])
