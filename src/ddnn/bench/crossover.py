"""Where splitting starts to pay: T_total of device+server and of server-only against the link
rate, and the rates at which the two curves cross.

Pure: curves are functions of the rate (the planner's prediction) or measured points joined in
log rate. On a slow link the raw input is what costs, so the split wins below the crossing and
server-only above it; a design whose device is slow may never win, one whose local exit answers
almost everything may always win; both are answers (no crossing in the range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ddnn.runtime.protocol import DEVICE_SERVER, SERVER_ONLY

Curve = Callable[[float], float]


def log_rates(lo: float, hi: float, n: int) -> list[float]:
    """n rates evenly spaced in log scale from lo to hi (both included), rounded to 3 digits."""
    if not 0 < lo < hi or n < 2:
        raise ValueError(f"need 0 < lo < hi and n >= 2, got {lo}, {hi}, {n}")
    return [float(f"{r:.3g}") for r in np.geomspace(lo, hi, n)]


@dataclass(frozen=True)
class Crossing:
    """The two configurations take equally long at `rate_mbit`; `split_wins_below`: the split is
    the faster one on slower links (the usual direction)."""

    rate_mbit: float
    split_wins_below: bool

    def text(self) -> str:
        slower, faster = ("below", "above") if self.split_wins_below else ("above", "below")
        return f"{self.rate_mbit:.3g} Mbit/s: device+server wins {slower} it, server-only {faster}"


def crossings(
    split: Curve, server_only: Curve, lo: float, hi: float, *, points: int = 200
) -> list[Crossing]:
    """Every rate in [lo, hi] where split(rate) == server_only(rate), found on a log grid of
    `points` and refined by bisection in log rate."""

    def split_slower(log_rate: float) -> bool:
        rate = math.exp(log_rate)
        return split(rate) >= server_only(rate)

    grid = np.linspace(math.log(lo), math.log(hi), points)
    slower = [split_slower(x) for x in grid]
    found = []
    for i in range(points - 1):
        if slower[i] == slower[i + 1]:
            continue
        a, b = float(grid[i]), float(grid[i + 1])
        for _ in range(50):  # invariant: split_slower(a) == slower[i] != split_slower(b)
            mid = (a + b) / 2
            a, b = (mid, b) if split_slower(mid) == slower[i] else (a, mid)
        found.append(Crossing(math.exp((a + b) / 2), split_wins_below=not slower[i]))
    return found


def joined(rates: Sequence[float], values: Sequence[float]) -> Curve:
    """Measured points as a curve: straight lines between them in log rate, flat past the ends."""
    order = np.argsort(rates)
    xs = np.log(np.asarray(rates, dtype=np.float64)[order])
    ys = np.asarray(values, dtype=np.float64)[order]
    return lambda rate: float(np.interp(math.log(rate), xs, ys))


def crossings_text(split: Curve, server_only: Curve, lo: float, hi: float) -> str:
    """One line: the crossings in [lo, hi], or which configuration wins over the whole range."""
    found = crossings(split, server_only, lo, hi)
    if found:
        return "; ".join(c.text() for c in found)
    winner = DEVICE_SERVER if split(lo) < server_only(lo) else SERVER_ONLY
    return f"no crossing between {lo:g} and {hi:g} Mbit/s: {winner} is faster throughout"
