"""The device's local exit on collected records: their device features and what the exit says.

Shared by `ddnn collect --model` (the local answers a frame did not carry, for the agreement of
local and cloud answers) and the distillation (`train/distill.py`), which trains the same heads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ddnn.errors import DdnnError
from ddnn.evaluate.policy import exit_predictions
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import class_map
from ddnn.nn.entropy import normalized_entropy
from ddnn.store.collected import Group


def device_features(model: HierarchicalModel, group: Group, rows: np.ndarray) -> Tensor:
    """The device features [N, D, ...] of the chosen records: as collected, or the frozen
    trunk's output on the collected raw input."""
    spec = model.spec
    x = torch.from_numpy(group.columns["x"][rows].astype(np.float32))
    if group.kind == "raw":
        with torch.no_grad():
            feats = [model.devices[i].body(model.normalize(x[:, i])) for i in range(spec.devices)]
        return torch.stack(feats, dim=1)
    expected = (spec.devices, *model.devices[0].out_shape)
    if group.section != 1 or tuple(x.shape[1:]) != expected:
        raise DdnnError(
            f"{group.name}: records of section {group.section} with x {tuple(x.shape[1:])} are "
            f"not this model's device features {expected} (collect on the server the devices "
            "send to, or in server-only mode)"
        )
    return x


def local_logits(model: HierarchicalModel, feats: Tensor, present: Tensor) -> Tensor:
    """feats [B, D, ...], present [B, D] -> the fused local exit's logits [B, C_exit]."""
    heads = [model.devices[i].exit_head for i in range(feats.shape[1])]
    per_device = torch.stack([h(feats[:, i]) for i, h in enumerate(heads)], dim=1)  # [B, D, C]
    return model.fuse_device_exits(per_device, present if feats.shape[1] > 1 else None)


@torch.no_grad()
def fill_local_answers(model: HierarchicalModel, group: Group) -> int:
    """Write the local exit's answer and entropy into the group's records that lack one (the
    frame carried no `scores`); returns how many were filled."""
    cols = group.columns
    rows = np.flatnonzero(cols["local_pred"] < 0)
    if not len(rows) or model.spec.device_section is None:
        return 0
    feats = device_features(model.eval(), group, rows)
    present = torch.from_numpy(cols["present"][rows].astype(bool))
    logits = local_logits(model, feats, present)
    local = model.spec.exit_sections[0].name
    cols["local_pred"] = cols["local_pred"].copy()
    cols["local_entropy"] = cols["local_entropy"].copy()
    cols["local_pred"][rows] = exit_predictions(logits.numpy(), class_map(model, local))
    cols["local_entropy"][rows] = normalized_entropy(logits).numpy()
    return len(rows)
