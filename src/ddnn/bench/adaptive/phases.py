"""Per-phase figures of the adaptive-threshold experiment, from the devices' records: p95 of
T_total, overall accuracy, local exit fraction and the threshold used, for the static and the
adaptive run, and the issue's target checked on them.

Pure: records in, dataclasses and a Markdown table out. A phase is a run of consecutive samples
of the stream (the first `samples` of what is left), not a span of time: the static and the
adaptive run see the same samples in each phase, so their accuracies are paired and a 0.5-point
difference is not sampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ddnn.errors import DdnnError
from ddnn.runtime.report import summarize
from ddnn.stats import percentile
from ddnn.tables import markdown_table

ACCURACY_TOLERANCE = 0.005  # the "within 0.5 point of the static run" in calm phases


@dataclass(frozen=True)
class Phase:
    """`samples` consecutive samples of the stream under one condition."""

    name: str
    samples: int
    disturbed: bool = False


def boundaries(phases: Sequence[Phase]) -> list[int]:
    """Stream positions where each phase after the first begins."""
    if not phases or any(p.samples < 1 for p in phases):
        raise DdnnError("every phase needs at least one sample")
    edges, at = [], 0
    for p in phases[:-1]:
        at += p.samples
        edges.append(at)
    return edges


def split(records: Sequence[dict[str, Any]], phases: Sequence[Phase]) -> list[list[dict[str, Any]]]:
    """The records cut into phases by stream position (frame order: one device streams the test
    split in order). Records past the last phase's end belong to it; a short stream leaves the
    last phases short or empty."""
    ordered = sorted(records, key=lambda r: int(r["frame_id"]))
    frames = sorted({int(r["frame_id"]) for r in ordered})
    position = {f: i for i, f in enumerate(frames)}
    parts: list[list[dict[str, Any]]] = [[] for _ in phases]
    edges = boundaries(phases)
    for r in ordered:
        k = sum(position[int(r["frame_id"])] >= e for e in edges)
        parts[k].append(r)
    return parts


@dataclass(frozen=True)
class PhaseRow:
    """One phase of one run (`static` or `adaptive`)."""

    run: str
    phase: str
    disturbed: bool
    samples: int
    seconds: float | None  # wall time the phase took (records stamped `t_s`)
    p50_total_ms: float | None
    p95_total_ms: float | None
    p95_settled_ms: float | None  # over the phase's second half: after the controller moved
    p95_device_ms: float | None  # the device alone: over the budget, no threshold can meet it
    accuracy: float | None
    local_exit: float | None  # answered at the local exit by decision (fallbacks excluded)
    degraded: int  # answered locally because upstream failed or was late
    threshold_median: float | None
    threshold_max: float | None


def phase_rows(
    run: str, records: Sequence[dict[str, Any]], phases: Sequence[Phase]
) -> list[PhaseRow]:
    """Each phase's figures; the report's own `summarize` computes them, so they mean what
    `ddnn run`'s table means."""
    rows = []
    for phase, part in zip(phases, split(records, phases), strict=True):
        s = summarize(part)
        thresholds = [float(r["threshold"]) for r in part if r.get("threshold") is not None]
        device = [float(r["device_ms"]) for r in part]
        late = [float(r["total_ms"]) for r in part[len(part) // 2 :]]
        stamps = [float(r["t_s"]) for r in part if "t_s" in r]
        rows.append(
            PhaseRow(
                run=run, phase=phase.name, disturbed=phase.disturbed, samples=len(part),
                seconds=round(max(stamps) - min(stamps), 1) if len(stamps) > 1 else None,
                p50_total_ms=s["time_ms"]["total"]["p50"] if part else None,
                p95_total_ms=s["time_ms"]["total"]["p95"] if part else None,
                p95_settled_ms=percentile(late, 95) if late else None,
                p95_device_ms=percentile(device, 95) if device else None,
                accuracy=s["accuracy"]["overall"] if part else None,
                local_exit=s["local_exit_fraction"] if part else None,
                degraded=s.get("degraded", 0),
                threshold_median=percentile(thresholds, 50) if thresholds else None,
                threshold_max=max(thresholds) if thresholds else None,
            )
        )  # fmt: skip
    return rows


@dataclass(frozen=True)
class Timeline:
    """How fast a run's threshold moved, in seconds after the disturbance went on (`apply_s`)
    and off (`restore_s`); None: it never did."""

    apply_s: float
    restore_s: float
    first_raise_s: float | None  # first sample with a raised threshold, after apply
    peak: float  # the highest threshold of the run
    peak_s: float | None  # when the peak was first reached, after apply
    back_s: float | None  # back at the starting threshold, after restore


def timeline(records: Sequence[dict[str, Any]], apply_s: float, restore_s: float) -> Timeline:
    """From records stamped `t_s` (seconds into the stream) and the switch times."""
    ordered = sorted(records, key=lambda r: float(r["t_s"]))
    start = float(ordered[0]["threshold"])
    peak = max(float(r["threshold"]) for r in ordered)

    def first(after: float, ok: Any) -> float | None:
        hit = next((r for r in ordered if r["t_s"] >= after and ok(float(r["threshold"]))), None)
        return None if hit is None else round(float(hit["t_s"]) - after, 2)

    return Timeline(
        apply_s=apply_s, restore_s=restore_s,
        first_raise_s=first(apply_s, lambda t: t > start),
        peak=peak, peak_s=first(apply_s, lambda t: t >= peak),
        back_s=first(restore_s, lambda t: t <= start) if peak > start else 0.0,
    )  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """One target in one phase: met (True), missed (False) or not applicable (None)."""

    phase: str
    target: str
    met: bool | None
    detail: str


def verdicts(
    static: Sequence[PhaseRow],
    adaptive: Sequence[PhaseRow],
    budget_ms: float,
    tolerance: float = ACCURACY_TOLERANCE,
) -> list[Verdict]:
    """The issue's target, phase by phase: the adaptive run's p95 T_total within the budget
    (not applicable where the device alone is over it), and in calm phases its accuracy within
    `tolerance` of the static run's (lower by at most that much)."""
    out = []
    for s, a in zip(static, adaptive, strict=True):
        if a.p95_total_ms is None or a.accuracy is None or s.accuracy is None:
            out.append(Verdict(a.phase, "p95 T_total <= budget", None, "no samples"))
            continue
        if a.p95_device_ms is not None and a.p95_device_ms > budget_ms:
            detail = f"the device alone takes {a.p95_device_ms:.1f} ms (p95) > {budget_ms:g} ms"
            out.append(Verdict(a.phase, "p95 T_total <= budget", None, detail))
        else:
            over = a.p95_total_ms - budget_ms
            detail = f"{a.p95_total_ms:.1f} ms" + (f", {over:.1f} ms over" if over > 0 else "")
            out.append(Verdict(a.phase, "p95 T_total <= budget", over <= 0, detail))
        if not a.disturbed:
            drop = s.accuracy - a.accuracy
            detail = f"{a.accuracy:.4f} vs {s.accuracy:.4f} ({-100 * drop:+.2f} points)"
            out.append(Verdict(a.phase, "accuracy within 0.5 point", drop <= tolerance, detail))
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _threshold(row: PhaseRow) -> str:
    if row.threshold_median is None or row.threshold_max is None:
        return "-"
    if row.threshold_median == row.threshold_max:
        return f"{row.threshold_median:.2f}"
    return f"{row.threshold_median:.2f} (max {row.threshold_max:.2f})"


COLUMNS = (
    "phase", "run", "samples", "seconds", "T_total p50 / p95 ms", "p95 2nd half",
    "overall accuracy", "local exit", "degraded", "threshold median",
)  # fmt: skip


def phase_table(rows: Sequence[PhaseRow]) -> str:
    """Both runs' rows, phase by phase, as one Markdown table."""
    order = list(dict.fromkeys(r.phase for r in rows))
    ordered = sorted(rows, key=lambda r: (order.index(r.phase), r.run != "static"))
    cells = [
        [
            r.phase + (" (disturbed)" if r.disturbed else ""), r.run, r.samples, _ms(r.seconds),
            f"{_ms(r.p50_total_ms)} / {_ms(r.p95_total_ms)}", _ms(r.p95_settled_ms), r.accuracy,
            r.local_exit,
            r.degraded, _threshold(r),
        ]
        for r in ordered
    ]  # fmt: skip
    return markdown_table(COLUMNS, cells)


def verdict_lines(found: Sequence[Verdict]) -> str:
    """One Markdown bullet per target and phase."""
    mark = {True: "met", False: "MISSED", None: "n/a"}
    return "\n".join(f"- {v.phase}: {v.target}: {mark[v.met]} ({v.detail})" for v in found)
