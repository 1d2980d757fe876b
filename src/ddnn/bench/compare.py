"""Predicted against measured, side by side: the figures the planner promises for a design and
what an emulated run of it delivered, with the error of each and whether it meets its target.

Pure: no runs, no planner; `bench/plan.py` fills the two sides. Time and bytes are compared by
relative error (against the measured value), accuracy by the difference in points, because a
relative error on an accuracy near 0.9 would hide a two-point miss inside "2 %".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddnn.stats import percentile
from ddnn.tables import markdown_table

# the targets: mean T_total within 15 %, bytes within 5 %, accuracy within 1 point
TIME_TARGET = 0.15
BYTES_TARGET = 0.05
ACCURACY_TARGET_POINTS = 1.0


@dataclass(frozen=True)
class Figures:
    """One side of the comparison for one design at one threshold (times in ms, accuracy 0..1)."""

    mean_total_ms: float
    p95_total_ms: float
    bytes_per_sample: float
    accuracy: float


@dataclass(frozen=True)
class Check:
    """A design's predicted and measured figures, and how far apart they are."""

    candidate: str
    threshold: float | None  # None: server-only, the final exit answers everything
    predicted: Figures
    measured: Figures
    samples: int = 0  # how many samples the measurement streamed

    @property
    def time_error(self) -> float:
        return relative_error(self.predicted.mean_total_ms, self.measured.mean_total_ms)

    @property
    def p95_error(self) -> float:
        return relative_error(self.predicted.p95_total_ms, self.measured.p95_total_ms)

    @property
    def bytes_error(self) -> float:
        return relative_error(self.predicted.bytes_per_sample, self.measured.bytes_per_sample)

    @property
    def accuracy_points(self) -> float:
        """Predicted minus measured accuracy, in percentage points."""
        return 100.0 * (self.predicted.accuracy - self.measured.accuracy)

    @property
    def accuracy_se_points(self) -> float:
        """The measured accuracy's standard error over `samples` (binomial), in points: a
        difference within about two of these is what sampling alone gives (nan: no samples)."""
        if self.samples <= 0:
            return math.nan
        a = self.measured.accuracy
        return 100.0 * math.sqrt(a * (1.0 - a) / self.samples)

    @property
    def misses(self) -> list[str]:
        """The targets this design misses, each saying by how much (empty: all met)."""
        out = []
        if not abs(self.time_error) <= TIME_TARGET:
            out.append(f"mean T_total off by {_pct(self.time_error)} (target {TIME_TARGET:.0%})")
        if not abs(self.bytes_error) <= BYTES_TARGET:
            out.append(f"bytes off by {_pct(self.bytes_error)} (target {BYTES_TARGET:.0%})")
        if not abs(self.accuracy_points) <= ACCURACY_TARGET_POINTS:
            out.append(
                f"accuracy off by {self.accuracy_points:+.1f} points "
                f"(target {ACCURACY_TARGET_POINTS:g})"
            )
        return out


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured; 0 when both are 0, inf when only measured is."""
    if measured == 0:
        return 0.0 if predicted == 0 else math.inf
    return (predicted - measured) / measured


def measured_figures(rows: Sequence[dict[str, Any]], bytes_field: str = "packet_bytes") -> Figures:
    """A deployment's per-frame rows (`runtime.report.frames`) -> the measured side; lost
    requests count in the time as they happened (the device's deadline) and as wrong answers.
    `bytes_field`: packet_bytes (MQTT PUBLISH packets, what the planner predicts) or
    frame_bytes (the ddnn frames inside them)."""
    if not rows:
        raise ValueError("no samples measured")
    total = [float(r["total_ms"]) for r in rows]
    return Figures(
        mean_total_ms=float(np.mean(total)),
        p95_total_ms=percentile(total, 95),
        bytes_per_sample=float(np.mean([r[bytes_field] for r in rows])),
        accuracy=float(np.mean([r["predicted"] == r["label"] for r in rows])),
    )


def _pct(x: float) -> str:
    return "inf" if math.isinf(x) else f"{100 * x:+.1f} %"


COLUMNS = (
    "design", "threshold", "samples",
    "T_total mean ms pred / meas", "err", "p95 ms pred / meas", "err",
    "bytes/sample pred / meas", "err", "accuracy pred / meas", "diff (points)",
    "meas. SE (points)", "targets",
)  # fmt: skip


def _row(c: Check) -> list[Any]:
    p, m = c.predicted, c.measured
    return [
        c.candidate, "-" if c.threshold is None else f"{c.threshold:g}", c.samples,
        f"{p.mean_total_ms:.2f} / {m.mean_total_ms:.2f}", _pct(c.time_error),
        f"{p.p95_total_ms:.2f} / {m.p95_total_ms:.2f}", _pct(c.p95_error),
        f"{p.bytes_per_sample:.1f} / {m.bytes_per_sample:.1f}", _pct(c.bytes_error),
        f"{100 * p.accuracy:.1f} / {100 * m.accuracy:.1f}", f"{c.accuracy_points:+.1f}",
        f"{c.accuracy_se_points:.1f}", "met" if not c.misses else "missed",
    ]  # fmt: skip


def comparison_table(checks: Iterable[Check]) -> str:
    """One row per design: each figure as predicted / measured, then its error."""
    return markdown_table(COLUMNS, [_row(c) for c in checks])


def misses_text(checks: Iterable[Check]) -> str:
    """One line per missed target, naming the design; empty when every target is met."""
    return "\n".join(f"{c.candidate}: {miss}" for c in checks for miss in c.misses)
