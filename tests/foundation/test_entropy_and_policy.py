import math

import numpy as np
import pytest
import torch

from ddnn.errors import DdnnError
from ddnn.evaluate.policy import check_threshold, choose_exits
from ddnn.model.outputs import OTHER
from ddnn.nn.entropy import normalized_entropy


def test_uniform_is_one_and_confident_is_near_zero():
    eta = normalized_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]]))
    assert eta[0].item() == pytest.approx(1.0, abs=1e-6)
    assert eta[1].item() < 1e-6


def test_matches_the_definition():
    p = torch.tensor([0.5, 0.25, 0.25])
    expected = -(p * p.log()).sum().item() / math.log(3)
    assert normalized_entropy(p.log()[None]).item() == pytest.approx(expected, rel=1e-6)


def test_one_class_is_rejected():
    with pytest.raises(ValueError):
        normalized_entropy(torch.zeros(2, 1))


def test_first_confident_exit_wins_and_last_exit_catches_the_rest():
    ents = np.array([[0.1, 0.6, 0.6, 0.2], [0.9, 0.2, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5]])
    preds = np.zeros((3, 4), dtype=np.int64)
    taken = choose_exits(ents, preds, [0.3, 0.3])
    assert taken.tolist() == [0, 1, 2, 0]


def test_threshold_is_strict():
    taken = choose_exits(np.array([[0.3], [0.0]]), np.zeros((2, 1), dtype=np.int64), [0.3])
    assert taken.tolist() == [1]


def test_other_never_exits_early():
    ents = np.array([[0.0, 0.0], [0.9, 0.9]])
    preds = np.array([[OTHER, 3], [1, 1]])
    assert choose_exits(ents, preds, [0.5]).tolist() == [1, 0]


def test_threshold_count_must_match():
    with pytest.raises(ValueError):
        choose_exits(np.zeros((2, 3)), np.zeros((2, 3), dtype=np.int64), [0.1, 0.2])


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_a_threshold_outside_zero_to_one_is_refused_with_the_range(bad):
    with pytest.raises(DdnnError, match=r"outside \[0, 1\]"):
        check_threshold(bad)


def test_the_bounds_themselves_are_thresholds():
    assert check_threshold(0.0) == 0.0 and check_threshold(1.0) == 1.0
