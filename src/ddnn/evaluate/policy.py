"""The exit policy: a sample leaves at the first exit whose normalized entropy is below its
threshold (and, for a Big-Little exit, whose answer is a prioritized class, not "other")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddnn.errors import DdnnError
from ddnn.model.outputs import OTHER
from ddnn.nn.entropy import normalized_entropy_np


@dataclass
class ExitOutputs:
    """Every exit's answer for every sample of an evaluation set (all exits are computed)."""

    names: list[str]  # exit (section) names, in the order a sample meets them
    logits: list[np.ndarray]  # per exit [N, C_exit]
    labels: np.ndarray  # [N] dataset classes
    class_maps: list[np.ndarray | None]  # per exit: exit class index -> dataset class (OTHER)
    devices_present: np.ndarray  # [N] how many devices took part (for byte counts)

    @property
    def predictions(self) -> np.ndarray:
        """[E, N] dataset-class predictions per exit (OTHER where an exit says "other")."""
        pairs = zip(self.logits, self.class_maps, strict=True)
        return np.stack([exit_predictions(lg, cmap) for lg, cmap in pairs])

    @property
    def entropies(self) -> np.ndarray:
        """[E, N] normalized entropy per exit."""
        return np.stack([normalized_entropy_np(lg) for lg in self.logits])

    def __len__(self) -> int:
        return len(self.labels)


def check_threshold(value: float, where: str = "threshold") -> float:
    """A threshold a user gave, checked: normalized entropy lies in [0, 1], so a value outside
    it would silently mean "every sample exits" (> 1) or "none does" (< 0)."""
    if not 0.0 <= value <= 1.0:  # nan too
        raise DdnnError(
            f"{where} {value:g} is outside [0, 1]: a sample exits early when its normalized "
            "entropy (0..1) is below it; give 0 (never exit early) up to 1 (exit unless uniform)"
        )
    return value


def confident(entropy: np.ndarray, prediction: np.ndarray, threshold: float) -> np.ndarray:
    """Whether an exit may answer: entropy below its threshold and not "other". Shared by the
    evaluation and every runtime tier, so both decide alike."""
    return (entropy < threshold) & (prediction != OTHER)


def exit_predictions(logits: np.ndarray, cmap: np.ndarray | None) -> np.ndarray:
    """logits [..., C_exit] -> dataset-class predictions [...] (OTHER for "other")."""
    p = logits.argmax(axis=-1)
    return p if cmap is None else cmap[p]


def choose_exits(
    entropies: np.ndarray, predictions: np.ndarray, thresholds: Sequence[float]
) -> np.ndarray:
    """[E, N] entropies and predictions, E - 1 thresholds -> [N] index of the exit taken."""
    n_exits, n = entropies.shape
    if len(thresholds) != n_exits - 1:
        raise ValueError(f"{n_exits} exits need {n_exits - 1} thresholds, got {len(thresholds)}")
    taken = np.full(n, n_exits - 1, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    for e, t in enumerate(thresholds):
        leave = undecided & confident(entropies[e], predictions[e], t)
        taken[leave] = e
        undecided &= ~leave
    return taken
