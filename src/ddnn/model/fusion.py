"""Aggregators that fuse several end devices' outputs at the next tier.

An absent device is masked out: max and avg look only at the devices present; concat puts 0 in
the absent device's slot, which for +-1 binary features is the neutral "no evidence" value, not a
feature any device can produce.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddnn.errors import DdnnError


def fuse(x: Tensor, present: Tensor | None, how: str) -> Tensor:
    """x [B, D, ...] and present [B, D] (bool) -> fused [B, ...] (concat: [B, D * C, ...])."""
    batch, devices = x.shape[:2]
    if present is None:
        present = torch.ones(batch, devices, dtype=torch.bool, device=x.device)
    if present.shape != (batch, devices):
        raise DdnnError(
            f"present mask has shape {tuple(present.shape)}, expected {(batch, devices)}"
        )
    if not bool(present.any(dim=1).all()):
        raise DdnnError("every sample needs at least one device present")
    mask = present.view(batch, devices, *([1] * (x.dim() - 2))).to(x.dtype)  # [B, D, 1, ...]
    if how == "max":
        return x.masked_fill(mask == 0, float("-inf")).amax(dim=1)
    if how == "avg":
        return (x * mask).sum(dim=1) / mask.sum(dim=1)
    if how == "concat":
        return (x * mask).flatten(1, 2)
    raise DdnnError(f"unknown aggregator {how!r}; valid: max, avg, concat")
