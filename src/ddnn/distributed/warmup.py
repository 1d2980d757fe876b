"""Gradual learning-rate warm-up for a scaled learning rate (Goyal et al. 2017, "Accurate, Large
Minibatch SGD"): with W workers the global batch is W times larger and the lr is scaled up
(`--lr-scaling linear|sqrt`); starting at the scaled lr can diverge while the weights are still
random, so the lr rises linearly from the unscaled base lr to the scaled one over the first
`--warmup-epochs` epochs of updates, then follows the trainer's own schedule."""

from __future__ import annotations

from typing import Any

import torch


class Warmup:
    """Wraps the trainer's scheduler (or None). `steps` updates of warm-up; the lr starts at
    `start_factor` x the lr the inner schedule gives (1 / scale factor: the unscaled base lr)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, inner: Any, steps: int, start_factor: float
    ) -> None:
        self.optimizer, self.inner = optimizer, inner
        self.steps, self.start_factor = max(0, int(steps)), float(start_factor)
        self.t = 0
        self.target = [float(g["lr"]) for g in optimizer.param_groups]  # the inner schedule's lr
        self._apply()

    def factor(self) -> float:
        if self.t >= self.steps:
            return 1.0
        return self.start_factor + (1.0 - self.start_factor) * self.t / self.steps

    def _apply(self) -> None:
        f = self.factor()
        for group, lr in zip(self.optimizer.param_groups, self.target, strict=True):
            group["lr"] = lr * f

    def step(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.target, strict=True):
            group["lr"] = lr  # the inner scheduler steps from its own (un-warmed) lr
        if self.inner is not None:
            self.inner.step()
        self.target = [float(g["lr"]) for g in self.optimizer.param_groups]
        self.t += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "steps": self.steps,
            "start_factor": self.start_factor,
            "target": self.target,
            "inner": self.inner.state_dict() if self.inner is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.steps = int(state["t"]), int(state["steps"])
        self.start_factor, self.target = float(state["start_factor"]), list(state["target"])
        if self.inner is not None and state["inner"] is not None:
            self.inner.load_state_dict(state["inner"])
        self._apply()


def with_warmup(
    optimizer: torch.optim.Optimizer, inner: Any, steps: int, start_factor: float
) -> Any:
    """The inner scheduler wrapped in a warm-up, or unchanged when there is nothing to warm up."""
    if steps <= 0 or start_factor >= 1.0:
        return inner
    return Warmup(optimizer, inner, steps, start_factor)
