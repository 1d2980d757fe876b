"""Hand-made device sections for the cases the presets do not reach: channel counts that are not
multiples of 32, zero padding on binary inputs (padded taps are 0, not -1), strides, explicit pad
layers, negative / zero batch-norm scales and exact ties, float layers with sign activations."""

import pytest

from ddnn.export.verify import verify
from ddnn.model.spec import LayerSpec as L

from .conftest import HAS_CC, custom_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make"),
]

CASES = {
    "odd-channels-padding-stride": (
        [L("bconv", out=5, pool=2), L("bconv", out=33), L("bconv", out=40, kernel=5, stride=2,
                                                            padding=1)],
        [L("blinear", activation="none")],
    ),
    "pad-layers-and-float-head": (
        [L("pad", padding=2), L("bconv", out=7, kernel=5, padding=0), L("pad", padding=1),
         L("bconv", out=9, padding=0, stride=2), L("pool", pool=2)],
        [L("linear", out=6, activation="tanh"), L("linear", activation="none", batch_norm=False)],
    ),
    "float-conv-with-sign-then-binary": (
        [L("conv", out=6, activation="sign", pool=2), L("bconv", out=12), L("dropout", p=0.5)],
        [L("blinear", out=10, activation="sign"), L("blinear", out=7, activation="relu"),
         L("linear", activation="none")],
    ),
    "float-layers-into-binary-linear": (
        [L("conv", out=4, activation="tanh", batch_norm=False),
         L("conv", out=8, stride=2, kernel=5), L("blinear", out=20, activation="sign")],
        [L("blinear", activation="none")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_c_is_exact_on_awkward_sections(tmp_path, name):
    layers, head = CASES[name]
    run = custom_model(tmp_path / "run", layers, head)
    report = verify(run, tmp_path / "c", samples=6, onnx=False, cross=False)
    assert report["inputs"].startswith("6 random inputs"), report["inputs"]  # and says why
    assert "records no dataset" in report["inputs"]
    assert report["c"]["passed"], report["c"]
    assert report["c"]["features_ok"] and report["c"]["decisions_identical"]


def test_padding_counts_as_zero_not_minus_one(tmp_path):
    """All-negative binary input and all-positive weights: inside, y = -taps; at a corner with
    padding 1 only 4 of 9 taps exist, so y = -4 C, not -9 C. Thresholds between the two would
    flip the corner bits if padding were treated as -1."""
    import numpy as np
    import torch

    from ddnn.export.engines import CEngine, TorchEngine
    from ddnn.store.artifact import load_model, save_model

    run = custom_model(
        tmp_path / "run", [L("bconv", out=4, pool=1), L("bconv", out=3, pool=1)],
        [L("blinear", activation="none")], shape=(1, 6, 6),
    )  # fmt: skip
    model = load_model(run)
    second = model.devices[0].body[1]
    with torch.no_grad():
        first = model.devices[0].body[0]
        first[0].weight.fill_(1.0)  # input in [0, 1] normalized by mean 0.4: mostly positive
        first[1].running_mean.fill_(1e6)  # -> every first-layer output is -1
        first[1].weight.fill_(1.0)
        first[1].bias.fill_(0.0)
        second[0].weight.fill_(1.0)
        second[1].weight.fill_(1.0)
        second[1].bias.fill_(0.0)
        second[1].running_var.fill_(1.0 - 1e-5)
        second[1].running_mean.fill_(-20.0)  # corner y = -16 -> +1; interior y = -36 -> -1
    save_model(model, run)
    view = np.random.default_rng(0).random((1, 1, 6, 6), dtype=np.float32)
    _, ref = TorchEngine(run).run(view)
    _, got = CEngine(run, artifacts=tmp_path / "c").run(view)
    bits = np.unpackbits(ref[0])[: 3 * 36].reshape(3, 6, 6)
    assert bits[:, 0, 0].tolist() == [1, 1, 1] and bits[:, 2, 2].tolist() == [0, 0, 0]
    assert np.array_equal(got, ref)
