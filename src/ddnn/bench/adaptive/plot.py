"""The experiment along the stream: each run's exit threshold (top) and T_total per sample with
a rolling p95 (bottom), the budget as a line and the disturbed phase shaded.

The x axis is the sample's position in the stream (time at the stream's rate when on
schedule): both runs' phases then line up, although a run whose offloads wait falls behind
schedule in wall time (the table's `seconds` column says by how much)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ROLLING = 100  # samples per rolling p95
COLOURS = {"static": "tab:grey", "adaptive": "tab:blue"}


def _rolling_p95(values: np.ndarray, n: int) -> np.ndarray:
    """p95 of the last `n` values at each position (fewer at the start)."""
    return np.array(
        [np.percentile(values[max(0, i - n + 1) : i + 1], 95) for i in range(len(values))]
    )


def plot_runs(report: dict[str, Any], records: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """`records`: each run's records with `t_s`; `report`: the experiment's summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = report["setup"]["budget_ms"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    for run, recs in records.items():
        recs = sorted(recs, key=lambda r: r["frame_id"])
        t = np.arange(len(recs))
        total = np.array([r["total_ms"] for r in recs])
        threshold = [r["threshold"] for r in recs]
        colour = COLOURS.get(run)
        top.step(t, threshold, where="post", color=colour, label=run)
        bottom.scatter(t, total, s=2, color=colour, alpha=0.25, linewidths=0)
        bottom.plot(t, _rolling_p95(total, ROLLING), color=colour, label=f"{run}: p95 of {ROLLING}")
    first, disturbed = (p["samples"] for p in report["phases"][:2])
    for ax in (top, bottom):
        ax.axvspan(first, first + disturbed, color="tab:orange", alpha=0.12, lw=0)
    bottom.axhline(budget, color="tab:red", ls="--", lw=1, label=f"budget {budget:g} ms")
    top.set_ylabel("local exit threshold")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{report['model']}: {report['disturbance']} (shaded: disturbed phase)")
    bottom.set_yscale("log")
    bottom.set_ylabel("T_total ms (log)")
    rate = report["setup"]["rate"]
    bottom.set_xlabel(f"sample in the stream ({rate:g} a second when on schedule)")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
