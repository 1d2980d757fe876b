"""DDNN's joint loss: the weighted sum of the cross-entropy at every exit."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ddnn.model.spec import ModelSpec


def target_maps(spec: ModelSpec) -> dict[str, Tensor]:
    """Per exit: dataset class -> exit class index. A Big-Little exit maps every class it does not
    prioritize to its last output, "other"."""
    maps = {}
    for s in spec.exit_sections:
        assert s.exit is not None
        if s.exit.classes is None:
            maps[s.name] = torch.arange(spec.num_classes)
        else:
            m = torch.full((spec.num_classes,), len(s.exit.classes), dtype=torch.long)
            m[list(s.exit.classes)] = torch.arange(len(s.exit.classes))
            maps[s.name] = m
    return maps


def joint_loss(
    logits: dict[str, Tensor], labels: Tensor, spec: ModelSpec, maps: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """logits: exit name -> [B, C_exit]; labels [B] -> (weighted total, per-exit losses)."""
    parts = {name: F.cross_entropy(lg, maps[name][labels]) for name, lg in logits.items()}
    weights = {s.name: s.exit.weight for s in spec.exit_sections if s.exit is not None}
    total = torch.stack([weights[n] * v for n, v in parts.items()]).sum()
    return total, parts
