"""The lowering's decisions, without a compiler: batch norm + sign as integer intervals, padding
merged into the next convolution, and clear errors for what cannot be exported."""

import numpy as np
import pytest
import torch
from torch import nn

from ddnn.errors import DdnnError
from ddnn.export.ir import Conv, Dense, Pad, Unpack, lower_device, sign_interval
from ddnn.model.spec import LayerSpec as L
from ddnn.store.artifact import load_model

from .conftest import custom_model


def _bn(weight, bias, mean, var) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(len(weight)).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight))
        bn.bias.copy_(torch.tensor(bias))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    return bn


def test_sign_interval_follows_the_sign_of_the_scale_and_keeps_ties():
    # ch0: scale > 0, bn(y) >= 0 iff y >= 2.5 -> [3, 9]; ch1: scale < 0, iff y <= 2.5 -> [-9, 2];
    # ch2: scale 0, bias < 0 -> never; ch3: scale 0, bias 0 -> always; ch4: tie bn(-1) == 0
    bn = _bn([1.0, -1.0, 0.0, 0.0, 2.0], [0, 0, -1, 0, 0], [2.5, 2.5, 0, 0, -1], [1, 1, 1, 1, 1])
    lo, hi = sign_interval(bn, reach=9)
    assert lo.tolist() == [3, -9, 1, -9, -1]
    assert hi.tolist() == [9, 2, 0, 9, 9]
    ys = torch.arange(-9, 10, dtype=torch.float32)
    ref = bn(ys.view(1, 1, -1).expand(1, 5, -1).contiguous())[0] >= 0  # [5, 19]
    mine = (ys[None] >= torch.tensor(lo)[:, None]) & (ys[None] <= torch.tensor(hi)[:, None])
    assert torch.equal(ref, mine)


def test_padding_is_merged_into_the_next_convolution(tmp_path):
    run = custom_model(
        tmp_path / "m",
        [L("pad", padding=2), L("bconv", out=4, kernel=5, padding=0), L("pad", padding=1),
         L("pool", pool=2)],
        [L("blinear", activation="none")],
    )  # fmt: skip
    low = lower_device(load_model(run), 0)
    conv = next(op for op in low.body if isinstance(op, Conv))
    assert conv.padding == 2 and conv.in_shape == (3, 13, 11)
    # the trailing pad is not followed by a convolution: explicit, in float (0 is not +-1)
    kinds = [type(op) for op in low.body]
    assert kinds[-3:] == [Unpack, Pad, type(low.body[-1])]
    assert not low.binary_features


def test_binary_layers_on_binary_input_get_integer_intervals(tmp_path):
    run = custom_model(
        tmp_path / "m", [L("bconv", out=8), L("bconv", out=5)], [L("blinear", activation="none")]
    )
    low = lower_device(load_model(run), 0)
    first, second = low.body[1], low.body[2]
    assert isinstance(first, Conv) and first.in_kind == "float" and first.lo is None
    assert isinstance(second, Conv) and second.integer and second.lo is not None
    head = low.head[0]
    assert isinstance(head, Dense) and head.integer and head.out_kind == "float"
    assert low.binary_features and low.feature_shape == (5, 13, 11)
    assert np.all(np.abs(second.weight) == 1)


def test_device_index_and_missing_device_section_are_clear_errors(tmp_path):
    run = custom_model(tmp_path / "m", [L("bconv", out=4)], [L("blinear", activation="none")])
    with pytest.raises(DdnnError, match=r"device index must be in 0\.\.0, got 2"):
        lower_device(load_model(run), 2)


def test_an_unexportable_block_is_a_clear_error(tmp_path):
    run = custom_model(tmp_path / "m", [L("bconv", out=4)], [L("blinear", activation="none")])
    model = load_model(run)
    model.devices[0].body.append(nn.Sequential(nn.Softmax(dim=1)))
    with pytest.raises(DdnnError, match="cannot export a Softmax block"):
        lower_device(model, 0)


def test_a_negative_pad_is_refused_not_merged_as_padding(tmp_path):
    """A crop merged into the next convolution would pad it by p - 1 instead: wrong C that
    exits 0. The spec refuses negative padding; the lowering refuses it too, for a module
    built by hand."""
    with pytest.raises(DdnnError, match=r"layer 0 \(pad\): padding must be >= 0"):
        custom_model(tmp_path / "s", [L("pad", padding=-1), L("bconv", out=4)], [L("blinear")])
    run = custom_model(tmp_path / "m", [L("bconv", out=4)], [L("blinear", activation="none")])
    model = load_model(run)
    model.devices[0].body.insert(0, nn.Sequential(nn.ZeroPad2d(-1)))
    with pytest.raises(DdnnError, match=r"negative padding \(a crop\) cannot be exported"):
        lower_device(model, 0)
