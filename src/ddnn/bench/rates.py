"""`ddnn bench crossover`: T_total against the link rate for device+server and server-only,
predicted by the planner at every rate and measured on the emulation at some, with the rates
where the curves cross (`bench/crossover.py`) and one PNG.

The planner's profile is measured once per design on the given device and link; only the rate
changes between predictions (the profile's times do not depend on it). Each measured rate is a
`ddnn run` over a link profile file with that rate and the given link's delay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.bench.crossover import Curve, crossings_text, joined
from ddnn.bench.emulated import link_at_rate, run_emulated
from ddnn.runtime.protocol import DEVICE_SERVER, MODES, SERVER_ONLY
from ddnn.tables import markdown_table

log = logging.getLogger(__name__)

SEARCH = 100.0  # predicted crossings are looked for from min(rates) / SEARCH to max * SEARCH


@dataclass(frozen=True)
class RatePoint:
    """T_total (ms, mean per sample) of one design and configuration on a link of one rate."""

    design: str
    configuration: str
    rate_mbit: float
    predicted_ms: float
    measured_ms: float | None = None  # None: not run at this rate
    measured_median_ms: float | None = None


@dataclass(frozen=True)
class CrossoverResult:
    """The points, the crossings per design ("predicted", and "measured" with two rates or
    more run) and the predicted curves for the plot."""

    device_profile: str
    link: str
    delay_ms: float
    threshold: float
    samples: int
    points: tuple[RatePoint, ...]
    crossings: dict[str, dict[str, str]]
    rates: tuple[float, float]  # the plotted range (crossings are looked for SEARCH x wider)
    curves: dict[str, dict[str, Curve]] = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "curves"}
        return doc | {"points": [asdict(p) for p in self.points]}


def predictor(
    run: str, device_profile: str, link: str, threshold: float, repeats: int
) -> Callable[..., float]:
    """(mode, rate) -> the planner's mean T_total, from the run's profile on device and link
    (the stored one when it was measured with the same `repeats`)."""
    from ddnn.emulation.profiles import load_device_profile, load_link_profile
    from ddnn.planning.predict import nearest_row, predict_row
    from ddnn.planning.profile import profile_run

    base = load_link_profile(link)
    profile = profile_run(run, load_device_profile(device_profile), base, repeats=repeats)
    row = nearest_row(profile, threshold)

    def predicted(mode: str, rate_mbit: float) -> float:
        chosen = row if mode == DEVICE_SERVER else None
        return predict_row(profile, chosen, rate_mbit, base.delay_ms).t_total_ms.mean

    return predicted


def bench_crossover(
    runs: Sequence[str],
    out_dir: str | Path,
    *,
    device_profile: str,
    link: str,
    threshold: float,
    rates: Sequence[float],
    measure_rates: Sequence[float],
    samples: int,
    repeats: int = 30,
) -> CrossoverResult:
    """Predicted T_total at `rates`, measured at `measure_rates`, crossings per design."""
    from ddnn.emulation.profiles import load_link_profile

    base = load_link_profile(link)
    out = Path(out_dir)
    points: list[RatePoint] = []
    crossings: dict[str, dict[str, str]] = {}
    curves: dict[str, dict[str, Curve]] = {}
    lo, hi = min(rates), max(rates)
    far_lo, far_hi = lo / SEARCH, hi * SEARCH  # a crossing just outside the plot is an answer
    for run in runs:
        design = Path(run).name
        predicted = predictor(run, device_profile, link, threshold, repeats)
        measured: dict[float, dict[str, list[float]]] = {}
        for rate in measure_rates:
            log.info("%s: emulated run at %g Mbit/s", design, rate)
            path = link_at_rate(base, rate, out / "links")
            found = run_emulated(
                run, out / design / f"{rate:g}mbit", device_profile=device_profile,
                link=str(path), threshold=threshold, samples=samples, reuse=True,
            )  # fmt: skip
            measured[rate] = {m: [r["total_ms"] for r in found.rows[m]] for m in MODES}
        for rate in sorted({*rates, *measure_rates}):
            for mode in MODES:
                got = measured.get(rate, {}).get(mode)
                points.append(
                    RatePoint(
                        design, mode, rate, predicted(mode, rate),
                        None if got is None else float(np.mean(got)),
                        None if got is None else float(np.median(got)),
                    )
                )  # fmt: skip
        curves[design] = {m: (lambda r, m=m, f=predicted: f(m, r)) for m in MODES}
        crossings[design] = {
            "predicted": crossings_text(
                curves[design][DEVICE_SERVER], curves[design][SERVER_ONLY], far_lo, far_hi
            )
        }
        if len(measured) >= 2:
            means = {
                m: joined(list(measured), [np.mean(measured[r][m]) for r in measured])
                for m in MODES
            }
            mlo, mhi = min(measured), max(measured)
            crossings[design]["measured"] = crossings_text(
                means[DEVICE_SERVER], means[SERVER_ONLY], mlo, mhi
            )
    return CrossoverResult(
        device_profile, link, base.delay_ms, threshold, samples, tuple(points), crossings,
        (lo, hi), curves,
    )  # fmt: skip


COLUMNS = ("design", "configuration", "rate Mbit/s", "predicted ms", "measured ms", "err",
           "measured median ms")  # fmt: skip


def crossover_text(result: CrossoverResult) -> str:
    rows = []
    for p in result.points:
        err = (
            None
            if p.measured_ms is None
            else f"{100 * (p.predicted_ms / p.measured_ms - 1):+.1f} %"
        )
        rows.append([
            p.design, p.configuration, f"{p.rate_mbit:g}", f"{p.predicted_ms:.2f}",
            None if p.measured_ms is None else f"{p.measured_ms:.2f}", err,
            None if p.measured_median_ms is None else f"{p.measured_median_ms:.2f}",
        ])  # fmt: skip
    lines = [
        f"T_total (mean ms) against the link rate: {result.device_profile}, "
        f"{result.link}'s delay ({result.delay_ms:g} ms one way), "
        f"threshold {result.threshold:g}",
        "",
        markdown_table(COLUMNS, rows),
        "",
    ]
    for design, found in result.crossings.items():
        lines += [f"{design} ({kind}): {text}" for kind, text in found.items()]
    return "\n".join(lines)


def plot_crossover(result: CrossoverResult, path: str | Path) -> None:
    """Predicted curves (lines), measured means (markers), log-log, one colour per design."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = result.rates
    grid = np.geomspace(lo, hi, 120)
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for i, (design, curves) in enumerate(result.curves.items()):
        colour = f"C{i}"
        for mode, style, marker in ((DEVICE_SERVER, "-", "o"), (SERVER_ONLY, "--", "s")):
            ax.plot(grid, [curves[mode](r) for r in grid], style, color=colour,
                    label=f"{design} {mode} (predicted)")  # fmt: skip
            pts = [
                p for p in result.points
                if p.design == design and p.configuration == mode and p.measured_ms is not None
            ]  # fmt: skip
            if pts:
                ax.plot(
                    [p.rate_mbit for p in pts], [p.measured_ms for p in pts], marker,
                    color=colour, linestyle="none", label=f"{design} {mode} (measured)",
                )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link rate (Mbit/s, each way)")
    ax.set_ylabel("T_total, mean per sample (ms)")
    ax.set_title(
        f"{result.device_profile}, {result.delay_ms:g} ms one-way delay, "
        f"threshold {result.threshold:g}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
