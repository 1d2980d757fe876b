import pytest
import torch

from ddnn.errors import DdnnError
from ddnn.model.fusion import fuse


@pytest.fixture
def x():
    # [B=2, D=3, 2]
    return torch.tensor(
        [[[1.0, -5.0], [3.0, 2.0], [-1.0, 9.0]], [[0.0, 1.0], [2.0, 2.0], [4.0, -4.0]]]
    )


def test_all_present(x):
    assert fuse(x, None, "max").tolist() == [[3.0, 9.0], [4.0, 2.0]]
    assert torch.allclose(fuse(x, None, "avg"), x.mean(dim=1))
    assert fuse(x, None, "concat").shape == (2, 6)


def test_missing_device_is_masked_not_zero(x):
    present = torch.tensor([[True, True, False], [False, True, True]])
    # max ignores the absent device even where its value is the largest
    assert fuse(x, present, "max").tolist() == [[3.0, 2.0], [4.0, 2.0]]
    # avg divides by the devices present, not by all devices
    assert fuse(x, present, "avg").tolist() == [[2.0, -1.5], [3.0, -1.0]]
    # concat leaves the absent slot neutral (0, never a +-1 feature)
    assert fuse(x, present, "concat")[0, 4:].tolist() == [0.0, 0.0]


def test_no_device_present_is_an_error(x):
    with pytest.raises(DdnnError):
        fuse(x, torch.zeros(2, 3, dtype=torch.bool), "max")


def test_unknown_aggregator(x):
    with pytest.raises(DdnnError, match="valid"):
        fuse(x, None, "median")
