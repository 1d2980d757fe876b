"""Normalized entropy, the confidence measure every exit decides on."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def normalized_entropy(logits: Tensor) -> Tensor:
    """eta = -sum p log p / log |C|, in [0, 1]; logits [..., C] -> eta [...]."""
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError("normalized entropy needs at least 2 classes")
    logp = torch.log_softmax(logits.float(), dim=-1)  # [..., C]
    ent = -(logp.exp() * logp).sum(dim=-1)  # [...]
    return (ent / math.log(num_classes)).clamp(0.0, 1.0)


def normalized_entropy_np(logits: np.ndarray) -> np.ndarray:
    """NumPy twin for the runtime, which must not need autograd; logits [..., C] -> [...]."""
    return normalized_entropy(torch.from_numpy(np.asarray(logits, dtype=np.float32))).numpy()
