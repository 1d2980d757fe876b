import math

import numpy as np
import pytest

from ddnn.stats import percentile


def test_nearest_rank_is_one_of_the_values_and_keeps_an_unanswered_request():
    values = [5.0, 1.0, math.inf, 3.0]
    assert percentile(values, 50, nearest_rank=True) == 3.0
    assert percentile(values, 75, nearest_rank=True) == 5.0
    assert percentile(values, 99, nearest_rank=True) == math.inf
    assert percentile(values, 0, nearest_rank=True) == 1.0


@pytest.mark.parametrize("n", [1, 2, 7, 100, 101])
@pytest.mark.parametrize("q", [50, 95, 99, 100])
def test_nearest_rank_is_the_textbook_definition(n, q):
    values = list(np.random.default_rng(n).random(n))
    ordered = sorted(values)
    expected = ordered[max(0, math.ceil(q / 100 * n) - 1)]
    assert percentile(values, q, nearest_rank=True) == expected


def test_default_interpolates_like_numpy_and_none_is_nan():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isnan(percentile([], 50)) and math.isnan(percentile([], 50, nearest_rank=True))
