"""Binarized layers in the eBNN style: +-1 weights and activations, trained with a straight-through
estimator, so a device stores 1 bit per weight and sends 1 bit per feature value.

Sign maps x >= 0 to +1 (never 0): the C and ONNX exports follow the same rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _SignSTE(torch.autograd.Function):
    """sign(x) forward, hard-tanh gradient backward (pass-through where |x| <= 1)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (x.abs() <= 1).to(grad.dtype)


def binarize(x: Tensor) -> Tensor:
    """+-1 with a straight-through gradient; 0 maps to +1."""
    return _SignSTE.apply(x)


class BinarySign(nn.Module):
    """Activation that makes a section's output 1 bit per value."""

    def forward(self, x: Tensor) -> Tensor:
        return binarize(x)


class BinaryConv2d(nn.Conv2d):
    """Convolution whose weights are binarized on the fly; the real weights are the latent
    parameters the optimizer updates (clipped to [-1, 1] by `clip_latent_weights`)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, binarize(self.weight), None, self.stride, self.padding)


class BinaryLinear(nn.Linear):
    """Linear layer with binarized weights (see BinaryConv2d)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, binarize(self.weight), None)


def clip_latent_weights(model: nn.Module) -> None:
    """Keep latent binary weights in [-1, 1] so the STE gradient does not vanish for good."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BinaryConv2d | BinaryLinear):
                module.weight.clamp_(-1.0, 1.0)
