"""Multi-view: each end device sees its own region of a sample, as in DDNN's multi-camera setup,
or (multi-view data) its own camera, the sample's views stacked along channels."""

from __future__ import annotations

import torch
from torch import Tensor

from ddnn.model.spec import ModelSpec


def split_views(x: Tensor, spec: ModelSpec) -> Tensor:
    """x [B, C, H, W] -> views [B, D, C, h, w], one per device as the spec's views say."""
    if spec.views.kind == "full":
        return x.unsqueeze(1).expand(-1, spec.devices, -1, -1, -1)
    if spec.views.kind == "channels":  # [B, D * c, H, W] -> [B, D, c, H, W]
        return x.view(x.shape[0], spec.devices, -1, *x.shape[2:])
    return torch.stack([device_view(x, spec, d) for d in range(spec.devices)], dim=1)


def device_view(x: Tensor, spec: ModelSpec, device: int) -> Tensor:
    """The view of one device: x [B, C, H, W] -> [B, C, h, w]."""
    if spec.views.kind == "full":
        return x
    if spec.views.kind == "channels":
        c = spec.view_shape[0]
        return x[:, device * c : (device + 1) * c]
    h, w = spec.views.size
    y, xo = spec.views.offsets[device]
    return x[:, :, y : y + h, xo : xo + w]


def with_data_presence(present: Tensor | None, data: Tensor | None) -> Tensor | None:
    """A device mask [B, D] (dropout, ablation) and the data's own [B, D] (views missing in
    multi-view data) combined; a sample that would lose every device keeps the ones its data
    has, since fusion needs at least one."""
    if data is None:
        return present
    if present is None:
        return data
    both = present & data
    empty = ~both.any(dim=1)  # [B]
    both[empty] = data[empty]
    return both
