"""Run a stored model's sections from a given section onward, deciding at every exit the same way
the evaluation does. Used by the server (and the edge for its own section)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddnn.errors import DdnnError
from ddnn.evaluate.policy import check_threshold, confident, exit_predictions
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import class_map
from ddnn.model.spec import ModelSpec
from ddnn.nn.entropy import normalized_entropy_np


@dataclass(frozen=True)
class Answer:
    predicted: int  # dataset class, -1 (OTHER) when a Big-Little exit says "other"
    exit_index: int  # index among the model's exits (0 = the device's local exit)
    entropy: float
    confident: bool  # the exit's threshold was met (always True at the final exit)


def exit_thresholds(spec: ModelSpec, given: Sequence[float] | None) -> dict[str, float]:
    """The early exits' thresholds (section name -> T): the calibrated ones in the spec, or
    `given` (--threshold: one for every early exit, or one per early exit) in their place."""
    stored = spec.thresholds
    if given is None:
        return stored
    values = [check_threshold(float(t), "--threshold") for t in given]
    if len(values) == 1:
        values *= len(stored)
    if len(values) != len(stored):
        names = ", ".join(stored) or "none"
        raise DdnnError(
            f"--threshold: model {spec.name} has {len(stored)} early exit(s) ({names}; the final "
            f"exit always answers): give one value or {len(stored)}, got {len(given)}"
        )
    return dict(zip(stored, values, strict=True))


def decide(
    model: HierarchicalModel, exit_index: int, logits: np.ndarray, threshold: float | None = None
) -> list[Answer]:
    """Exit `exit_index`'s decision for each row of logits [B, C_exit]; `threshold` overrides
    the exit's calibrated one (ignored at the final exit, which always answers)."""
    exits = model.spec.exit_sections
    section = exits[exit_index]
    assert section.exit is not None
    preds = exit_predictions(logits, class_map(model, section.name))  # [B]
    ents = normalized_entropy_np(logits)  # [B]
    final = exit_index == len(exits) - 1
    if threshold is None:
        threshold = section.exit.threshold
    ok = np.ones(len(preds), bool) if final else confident(ents, preds, threshold)
    return [
        Answer(int(p), exit_index, float(e), bool(c))
        for p, e, c in zip(preds, ents, ok, strict=True)
    ]


class SectionExecutor:
    """The upper sections of one model, callable from any section index. `thresholds`
    (section name -> T, from `exit_thresholds`) override the calibrated exit thresholds."""

    def __init__(
        self, model: HierarchicalModel, thresholds: Mapping[str, float] | None = None
    ) -> None:
        self.model = model.eval()
        self.spec = model.spec
        self.thresholds = dict(thresholds or {})
        self._exit_of = {s.name: i for i, s in enumerate(self.spec.exit_sections)}
        self._shapes: dict[int, tuple[int, ...]] = {}  # asked for on every request

    def input_shape(self, section: int) -> tuple[int, ...]:
        """Per-sample shape a request to `section` must carry. Section 0 (server-only: the whole
        model) and the first upper section take one row per device: [D, ...]."""
        shape = self._shapes.get(section)
        if shape is None:
            shape = self._shapes[section] = self._input_shape(section)
        return shape

    def _input_shape(self, section: int) -> tuple[int, ...]:
        spec, model = self.spec, self.model
        if section == 0:
            return (spec.devices, *spec.view_shape)
        if not 0 < section < len(spec.sections):
            raise DdnnError(f"model {spec.name} has no section {section} to run upstream")
        s = spec.sections[section]
        if s.input == "raw":
            return (spec.devices, *spec.view_shape)
        prev = spec.sections[section - 1]
        if prev.tier == "device":
            return (spec.devices, *model.devices[0].out_shape)
        return tuple(model.upper[prev.name].out_shape)

    @torch.no_grad()
    def run(self, section: int, x: np.ndarray, present: np.ndarray | None) -> list[Answer]:
        """x [B, *input_shape(section)], present [B, D] (bool) or None -> one Answer per row.

        Runs section after section and answers at the first confident exit; rows that are
        confident early are still carried through later sections with the batch (cheap, and
        it keeps batches whole)."""
        expected = self.input_shape(section)
        if tuple(x.shape[1:]) != expected:
            raise DdnnError(
                f"section {section} of {self.spec.name} expects per-sample shape {expected}, "
                f"got {tuple(x.shape[1:])}"
            )
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        mask = None if present is None else torch.from_numpy(present.astype(bool))
        batch = len(x)
        answers: list[Answer | None] = [None] * batch
        if section == 0:
            logits = self.model(inputs, mask)
            final = len(self.spec.exit_sections) - 1
            return decide(self.model, final, logits[self.spec.exit_sections[-1].name].numpy())
        feats = inputs
        for s in self.spec.sections[section:]:
            out = self.model.run_upper(s.name, feats, mask)
            mask = None
            feats = out.features
            if out.logits is None:
                continue
            t = self.thresholds.get(s.name)
            decided = decide(self.model, self._exit_of[s.name], out.logits.numpy(), t)
            for i, ans in enumerate(decided):
                if answers[i] is None and ans.confident:
                    answers[i] = ans
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]
