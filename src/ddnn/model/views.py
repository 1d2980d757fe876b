"""Multi-view: each end device sees its own region of a sample, as in DDNN's multi-camera setup."""

from __future__ import annotations

import torch
from torch import Tensor

from ddnn.model.spec import ModelSpec


def split_views(x: Tensor, spec: ModelSpec) -> Tensor:
    """x [B, C, H, W] -> views [B, D, C, h, w], one per device as the spec's views say."""
    if spec.views.kind == "full":
        return x.unsqueeze(1).expand(-1, spec.devices, -1, -1, -1)
    return torch.stack([device_view(x, spec, d) for d in range(spec.devices)], dim=1)


def device_view(x: Tensor, spec: ModelSpec, device: int) -> Tensor:
    """The view of one device: x [B, C, H, W] -> [B, C, h, w]."""
    if spec.views.kind == "full":
        return x
    h, w = spec.views.size
    y, xo = spec.views.offsets[device]
    return x[:, :, y : y + h, xo : xo + w]
