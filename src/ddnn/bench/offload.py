"""The offloaded request the benchmarks send: what a single device publishes when its local exit
is not confident (section 1, the device section's binarized features packed as bits).

Kept free of torch so load-generator processes start fast and stay small: callers that have the
model compute the shape once with `offload_shape` and pass it on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ddnn.runtime.wire import Encoding, Request, Tensor, encode_tensor


def offload_shape(model: Any) -> tuple[int, ...]:
    """Per-request shape of section 1's input: [D, *device section output]."""
    return (model.spec.devices, *model.devices[0].out_shape)


def offload_features(shape: tuple[int, ...], seed: int) -> Tensor:
    """Random binarized features (the values do not matter to the runtime, the size does)."""
    feats = np.where(np.random.default_rng(seed).standard_normal(shape) >= 0, 1.0, -1.0)
    return encode_tensor(feats, Encoding.BITS)  # [D, *out] as ceil(n / 8) bytes


def offload_request(
    shape: tuple[int, ...],
    name: str,
    version: int,
    rid: int,
    device: str,
    features: Tensor | None = None,
    frame_id: int | None = None,
) -> Request:
    """An offloaded request; `features` defaults to ones drawn from `rid` (fresh per request)."""
    tensor = features if features is not None else offload_features(shape, rid)
    return Request(rid, name, version, device, rid if frame_id is None else frame_id, 1, (tensor,))
