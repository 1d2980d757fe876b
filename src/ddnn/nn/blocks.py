"""Turn layer specs into modules, inferring each block's input size from the previous one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ddnn.errors import DdnnError
from ddnn.nn.binary import BinaryConv2d, BinaryLinear, BinarySign
from ddnn.nn.layer import LayerSpec

Shape = tuple[int, ...]  # per-sample shape, without the batch dimension


def _activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU(),
        "tanh": nn.Tanh(),
        "sign": BinarySign(),
        "none": nn.Identity(),
    }[name]


def _block(layer: LayerSpec, in_shape: Shape, out: int) -> nn.Module:
    """One layer spec -> a Sequential; `in_shape` is what the block receives. The fields each
    type reads here are model/shapes.py `LAYER_FIELDS`: keep the two in step."""
    mods: list[nn.Module] = []
    pad = layer.conv_padding
    if layer.type in ("linear", "blinear") and len(in_shape) > 1:
        mods.append(nn.Flatten())
        in_shape = (math.prod(in_shape),)
    if layer.type == "conv":
        mods.append(nn.Conv2d(in_shape[0], out, layer.kernel, layer.stride, pad))
        if layer.batch_norm:
            mods.append(nn.BatchNorm2d(out))
        mods.append(_activation(layer.activation))
        if layer.pool > 1:
            mods.append(nn.MaxPool2d(layer.pool))
    elif layer.type == "bconv":
        # eBNN ConvP order: binary conv, pool, batch norm, sign -> 1 bit per output value
        mods.append(BinaryConv2d(in_shape[0], out, layer.kernel, layer.stride, pad, bias=False))
        if layer.pool > 1:
            mods.append(nn.MaxPool2d(layer.pool))
        mods.append(nn.BatchNorm2d(out))
        mods.append(BinarySign())
    elif layer.type == "linear":
        mods.append(nn.Linear(in_shape[0], out))
        if layer.batch_norm:
            mods.append(nn.BatchNorm1d(out))
        mods.append(_activation(layer.activation))
    elif layer.type == "blinear":
        mods.append(BinaryLinear(in_shape[0], out, bias=False))
        mods.append(nn.BatchNorm1d(out))  # scale and shift: binary dot products are integers
        mods.append(_activation(layer.activation))
    elif layer.type == "pool":
        mods.append(nn.MaxPool2d(layer.pool))
    elif layer.type == "pad":
        mods.append(nn.ZeroPad2d(layer.padding or 0))
    elif layer.type == "dropout":
        mods.append(nn.Dropout(layer.p))
    else:  # pragma: no cover - the spec validates types
        raise AssertionError(layer.type)
    return nn.Sequential(*mods)


def build_layers(
    layers: Sequence[LayerSpec], in_shape: Shape, final_out: int = 0
) -> tuple[nn.Sequential, Shape]:
    """Build a stack; a last layer with `out = 0` gets `final_out` outputs.

    Returns the stack and its per-sample output shape.
    """
    blocks: list[nn.Module] = []
    shape = tuple(in_shape)
    for i, layer in enumerate(layers):
        out = layer.out
        if out == 0 and layer.type in ("conv", "bconv", "linear", "blinear"):
            if i != len(layers) - 1 or final_out == 0:
                raise DdnnError(f"layer {i} ({layer.type}) needs a positive 'out'")
            out = final_out
        block = _block(layer, shape, out)
        blocks.append(block)
        shape = _out_shape(block, shape)
    return nn.Sequential(*blocks), shape


def _out_shape(block: nn.Module, in_shape: Shape) -> Shape:
    """Shape inference by a dry run: exact for every layer type, and cheap at build time."""
    was_training = block.training
    block.eval()
    with torch.no_grad():
        y = block(torch.zeros(1, *in_shape))
    block.train(was_training)
    return tuple(y.shape[1:])
