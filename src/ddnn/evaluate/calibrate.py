"""Threshold sweeps and calibration on the validation split.

Calibration modes: `budget` takes the most early exits whose overall accuracy stays within
`tolerance` of the final exit alone; `fraction` hits a target local-exit fraction; `accuracy` takes
the best overall accuracy (ties: more early exits).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ddnn.evaluate.policy import ExitOutputs, choose_exits

GRID = np.round(np.linspace(0.0, 1.0, 41), 4)


def _score(
    preds: np.ndarray, ents: np.ndarray, labels: np.ndarray, thresholds: tuple[float, ...]
) -> tuple[float, float, float]:
    """(overall accuracy, local-exit fraction, fraction leaving before the final exit)."""
    taken = choose_exits(ents, preds, thresholds)  # [N]
    correct = preds[taken, np.arange(len(labels))] == labels
    return float(correct.mean()), float((taken == 0).mean()), float((taken < len(preds) - 1).mean())


def calibrate(
    outputs: ExitOutputs,
    mode: str = "budget",
    tolerance: float = 0.003,
    target_fraction: float = 0.7,
) -> list[float]:
    """Thresholds for the non-final exits, chosen on `outputs` (the validation split)."""
    n_free = len(outputs.names) - 1
    if n_free == 0:
        return []
    if mode == "fraction":
        # the first exit's threshold is the entropy quantile that lets target_fraction leave
        t0 = float(np.quantile(outputs.entropies[0], target_fraction))
        return [t0] + [0.5] * (n_free - 1)
    preds, ents, labels = outputs.predictions, outputs.entropies, outputs.labels  # [E, N] x2, [N]
    cloud_only = float((preds[-1] == labels).mean())
    best: tuple[Any, ...] | None = None
    best_t: tuple[float, ...] = (0.0,) * n_free
    for combo in itertools.product(GRID, repeat=n_free):
        acc, local, early = _score(preds, ents, labels, combo)
        if mode == "budget":
            if acc < cloud_only - tolerance:
                continue
            key: tuple[Any, ...] = (local, early, acc)
        elif mode == "accuracy":
            key = (acc, local, early)
        else:
            raise ValueError(f"unknown calibration mode {mode!r}")
        if best is None or key > best:
            best, best_t = key, combo
    return [float(t) for t in best_t]


def sweep(outputs: ExitOutputs, evaluate_fn: Any, grid: np.ndarray = GRID) -> list[dict[str, Any]]:
    """One report per threshold, the same threshold at every non-final exit."""
    n_free = len(outputs.names) - 1
    return [evaluate_fn([float(t)] * n_free) | {"threshold": float(t)} for t in grid]


def plot_sweep(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Accuracy and bytes per sample against the threshold, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, [r["accuracy"]["overall"] for r in rows], label="overall accuracy")
    ax.plot(t, [r["accuracy"]["cloud_only"] for r in rows], "--", label="cloud-only accuracy")
    ax.plot(t, [r["local_exit_fraction"] for r in rows], ":", label="local exit fraction")
    ax.set_xlabel("threshold T (exit when normalized entropy < T)")
    ax.set_ylabel("accuracy / fraction")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(t, [r["bytes_per_sample"] for r in rows], color="tab:red", label="bytes per sample")
    ax2.set_ylabel("bytes per sample sent upward")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
