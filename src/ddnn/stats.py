"""Percentiles, one definition for every report (`ddnn run`, the benchmarks)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np


def percentile(values: Sequence[float], q: float, *, nearest_rank: bool = False) -> float:
    """The q-th percentile (0..100) of `values`; nan when there are none.

    By default numpy's linear interpolation between the two nearest ranks. With `nearest_rank`
    the answer is one of the values (the smallest with at least q % of them at or below it), so
    an infinite value (a request never answered) shows as inf instead of being averaged away.
    """
    if len(values) == 0:
        return math.nan
    method: Literal["inverted_cdf", "linear"] = "inverted_cdf" if nearest_rank else "linear"
    return float(np.percentile(values, q, method=method))
