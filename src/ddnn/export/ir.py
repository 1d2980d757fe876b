"""Lower a device section to a short list of ops the C generator can emit one by one.

What the lowering decides, so the generator does not have to:
- batch norm is folded into the weights of float convolutions and linear layers;
- a binary layer fed binary values computes an exact integer y = matches - mismatches, so its
  batch norm and sign become an integer interval lo <= y <= hi per channel. The interval is found
  by running the layer's own BatchNorm on every reachable y, so it reproduces PyTorch's float
  rounding and the sign of the BN scale (a negative scale flips the comparison) by construction;
- a float activation after max pooling equals pooling after the activation (relu, tanh and sign
  are monotone), so every convolution is computed as conv -> pool -> scale -> activation;
- ZeroPad2d is merged into the next convolution's padding (both pad with 0), dropout vanishes;
- where a float layer receives binary values, an explicit Unpack op converts them.

Every tensor is [C, H, W]; a vector is [N, 1, 1]. "bits" tensors are +-1 values packed 1 bit
each; "float" tensors are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel, Section
from ddnn.model.outputs import binary_output
from ddnn.nn.binary import BinaryConv2d, BinaryLinear, BinarySign

Kind = Literal["float", "bits"]
Shape3 = tuple[int, int, int]
ACTS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Identity: "none", BinarySign: "sign"}


@dataclass
class Op:
    in_shape: Shape3
    out_shape: Shape3
    in_kind: Kind
    out_kind: Kind


@dataclass
class Normalize(Op):
    mean: float = 0.0
    std: float = 1.0


@dataclass
class Pad(Op):
    pad: int = 0


@dataclass
class MaxPool(Op):
    size: int = 2


@dataclass
class Unpack(Op):
    """bits -> float +-1."""


@dataclass
class Affine(Op):
    """A convolution or dense layer: acc = W * x + bias -> [max pool] -> [acc * scale + shift]
    -> activation; with `lo`/`hi`, the output bit is lo <= acc <= hi instead (integer acc)."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # float32
    binary: bool = False  # weight values are +-1 and stored 1 bit each
    bias: np.ndarray | None = None  # [O] float32 (float layers, batch norm folded in)
    scale: np.ndarray | None = None  # [O] float32 (binary layers: batch norm after the sum)
    shift: np.ndarray | None = None  # [O] float32
    lo: np.ndarray | None = None  # [O] int32 (binary layers on bits with a sign output)
    hi: np.ndarray | None = None
    act: str = "none"  # relu, tanh, none, sign (sign: out_kind is "bits")

    @property
    def integer(self) -> bool:
        """Binary weights on binary input: the accumulator is an exact integer."""
        return self.binary and self.in_kind == "bits"


@dataclass
class Conv(Affine):
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    pool: int = 1

    @property
    def conv_shape(self) -> tuple[int, int]:
        """H, W of the convolution output before pooling."""
        _, h, w = self.in_shape
        k, s, p = self.kernel, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


@dataclass
class Dense(Affine):
    pass


@dataclass
class Lowered:
    """A device section as ops: `body` ends at the features sent upward, `head` at the logits."""

    body: list[Op]
    head: list[Op]
    binary_features: bool  # features go on the wire packed 1 bit each
    feature_shape: Shape3
    num_logits: int


def _bn_terms(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """alpha, beta with bn(x) = x * alpha + beta, in float32 as PyTorch's CPU kernel forms them."""
    assert bn.running_var is not None and bn.running_mean is not None
    var = bn.running_var.detach().float().numpy()
    mean = bn.running_mean.detach().float().numpy()
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))
    weight = bn.weight.detach().float().numpy() if bn.weight is not None else np.ones_like(var)
    bias = bn.bias.detach().float().numpy() if bn.bias is not None else np.zeros_like(var)
    alpha = (invstd * weight).astype(np.float32)
    return alpha, (bias - mean * alpha).astype(np.float32)


@torch.no_grad()
def sign_interval(bn: nn.BatchNorm1d | nn.BatchNorm2d, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel [lo, hi] with sign(bn(y)) = +1 exactly for the integers y in it, y in
    [-reach, reach]. Runs the module itself on every such y, so rounding matches PyTorch."""
    ys = torch.arange(-reach, reach + 1, dtype=torch.float32)  # [L]
    channels = bn.num_features
    shape = (1, channels, len(ys)) + ((1,) if isinstance(bn, nn.BatchNorm2d) else ())
    x = ys.view(1, 1, -1, *shape[3:]).expand(shape).contiguous()
    positive = (bn.eval()(x) >= 0).reshape(channels, -1).numpy()  # [C, L]
    lo = np.empty(channels, np.int32)
    hi = np.empty(channels, np.int32)
    for c in range(channels):
        idx = np.flatnonzero(positive[c])
        if len(idx) == 0:
            lo[c], hi[c] = 1, 0  # never +1
            continue
        if idx[-1] - idx[0] + 1 != len(idx):  # pragma: no cover - bn is affine, so monotone
            raise AssertionError(f"batch norm channel {c} is not monotone")
        lo[c], hi[c] = idx[0] - reach, idx[-1] - reach
    return lo, hi


class _Lowering:
    """Walks the blocks of a section, tracking the current shape and kind."""

    def __init__(self, shape: Shape3, kind: Kind) -> None:
        self.ops: list[Op] = []
        self.shape = shape
        self.kind: Kind = kind
        self.pending_pad = 0  # from ZeroPad2d, merged into the next convolution

    def add(self, op: Op) -> None:
        self.ops.append(op)
        self.shape, self.kind = op.out_shape, op.out_kind

    def need_float(self) -> None:
        if self.kind == "bits":
            self.add(Unpack(self.shape, self.shape, "bits", "float"))

    def flush_pad(self) -> None:
        """An explicit Pad op, for padding not followed by a convolution."""
        p, self.pending_pad = self.pending_pad, 0
        if p:
            self.need_float()  # a padded +-1 tensor holds 0s: no longer binary
            c, h, w = self.shape
            self.add(Pad(self.shape, (c, h + 2 * p, w + 2 * p), "float", "float", pad=p))

    def block(self, mods: list[nn.Module], where: str) -> None:
        mods = [m for m in mods if not isinstance(m, nn.Dropout | nn.Flatten)]
        if not mods:
            return
        head, rest = mods[0], mods[1:]
        if isinstance(head, nn.ZeroPad2d):
            pads = set(head.padding)
            if len(pads) != 1 or rest:
                raise DdnnError(f"{where}: only uniform ZeroPad2d blocks can be exported")
            pad = int(pads.pop())
            if pad < 0:  # a crop: merged into a convolution's padding it would pad instead
                raise DdnnError(f"{where}: negative padding (a crop) cannot be exported to C")
            self.pending_pad += pad
        elif isinstance(head, nn.MaxPool2d):
            self.pool(head, where)
            self.block(rest, where)
        elif isinstance(head, nn.Conv2d):
            self.conv(head, rest, where)
        elif isinstance(head, nn.Linear):
            self.dense(head, rest, where)
        else:
            raise DdnnError(f"{where}: cannot export a {type(head).__name__} block to C")

    def pool(self, mod: nn.MaxPool2d, where: str) -> None:
        size = _pool_size(mod, where)
        self.flush_pad()
        c, h, w = self.shape
        self.add(MaxPool(self.shape, (c, h // size, w // size), self.kind, self.kind, size=size))

    def conv(self, mod: nn.Conv2d, rest: list[nn.Module], where: str) -> None:
        binary = isinstance(mod, BinaryConv2d)
        if not binary:
            self.need_float()  # the pending padding stays 0 after unpacking: merged below
        k, s, p = mod.kernel_size, mod.stride, mod.padding
        if isinstance(p, str) or len(set(k)) != 1 or len(set(s)) != 1 or len(set(p)) != 1:
            raise DdnnError(f"{where}: only square kernels, strides and paddings are exported")
        if mod.groups != 1 or set(mod.dilation) != {1}:
            raise DdnnError(f"{where}: grouped or dilated convolutions are not exported")
        op = Conv(
            self.shape, self.shape, self.kind, "float",
            kernel=k[0], stride=s[0], padding=p[0] + self.pending_pad,
        )  # fmt: skip
        self.pending_pad = 0
        weight = mod.weight.detach().float()  # [O, I, k, k]
        bias = mod.bias.detach().float() if mod.bias is not None else torch.zeros(len(weight))
        pools = [i for i, m in enumerate(rest) if isinstance(m, nn.MaxPool2d)]
        bns = [i for i, m in enumerate(rest) if isinstance(m, nn.BatchNorm2d)]
        # binary: pool, then batch norm (eBNN ConvP); float: batch norm (folded), then pool
        if (pools and bns and (pools[0] > bns[0]) == binary) or len(pools) > 1:
            names = [type(m).__name__ for m in rest]
            raise DdnnError(f"{where}: cannot export the layer sequence {names} to C")
        op.pool = _pool_size(rest[pools[0]], where) if pools else 1  # type: ignore[arg-type]
        others = [m for m in rest if not isinstance(m, nn.MaxPool2d)]
        self.affine(op, weight, bias, binary, others, where)
        hc, wc = op.conv_shape
        op.out_shape = (len(weight), hc // op.pool, wc // op.pool)
        self.add(op)

    def dense(self, mod: nn.Linear, rest: list[nn.Module], where: str) -> None:
        binary = isinstance(mod, BinaryLinear)
        self.flush_pad()
        if not binary:
            self.need_float()
        if math.prod(self.shape) != mod.in_features:
            raise DdnnError(f"{where}: linear layer expects {mod.in_features} inputs")
        weight = mod.weight.detach().float()  # [O, N]
        bias = mod.bias.detach().float() if mod.bias is not None else torch.zeros(len(weight))
        op = Dense(self.shape, (len(weight), 1, 1), self.kind, "float")
        self.affine(op, weight, bias, binary, rest, where)
        self.add(op)

    def affine(
        self,
        op: Affine,
        weight: torch.Tensor,
        bias: torch.Tensor,
        binary: bool,
        rest: list[nn.Module],
        where: str,
    ) -> None:
        """Fill weights, batch norm and activation of `op` from the modules after the layer."""
        bns = [m for m in rest if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
        acts = [ACTS[type(m)] for m in rest if type(m) in ACTS]
        if len(bns) + len(acts) != len(rest) or len(bns) > 1 or len(acts) > 1:
            names = [type(m).__name__ for m in rest]
            raise DdnnError(f"{where}: cannot export the layer sequence {names} to C")
        op.act = acts[0] if acts else "none"
        op.out_kind = "bits" if op.act == "sign" else "float"
        op.binary = binary
        if binary:
            if bias.abs().max() > 0:  # binary layers are built without bias
                raise DdnnError(f"{where}: binary layers with a bias are not exported")
            op.weight = np.where(weight.numpy() >= 0, 1.0, -1.0).astype(np.float32)
            if bns:
                op.scale, op.shift = _bn_terms(bns[0])
                if op.integer and op.act == "sign":
                    reach = int(np.prod(op.weight.shape[1:]))
                    op.lo, op.hi = sign_interval(bns[0], reach)
            return
        w64, b64 = weight.double().numpy(), bias.double().numpy()
        if bns:  # fold: bn(W x + b) = (alpha W) x + (alpha b + beta)
            alpha, beta = (t.astype(np.float64) for t in _bn_terms(bns[0]))
            w64 = w64 * alpha.reshape(-1, *([1] * (w64.ndim - 1)))
            b64 = b64 * alpha + beta
        op.weight, op.bias = w64.astype(np.float32), b64.astype(np.float32)


def _pool_size(mod: nn.MaxPool2d, where: str) -> int:
    k, s = mod.kernel_size, mod.stride
    if not isinstance(k, int) or s not in (k, (k, k)) or mod.padding not in (0, (0, 0)):
        raise DdnnError(f"{where}: only MaxPool2d(k) with stride k and no padding is exported")
    if mod.dilation not in (1, (1, 1)) or mod.ceil_mode:
        raise DdnnError(f"{where}: dilated or ceil-mode pooling is not exported")
    return k


def _blocks(seq: nn.Sequential) -> list[list[nn.Module]]:
    return [list(b) if isinstance(b, nn.Sequential) else [b] for b in seq]


def lower_section(section: Section, mean: float, std: float) -> Lowered:
    """The ops of a device section, input normalization first."""
    c, h, w = section.in_shape
    low = _Lowering((c, h, w), "float")
    low.add(Normalize(low.shape, low.shape, "float", "float", mean=mean, std=std))
    for i, mods in enumerate(_blocks(section.body)):
        low.block(mods, f"{section.spec.name} block {i}")
    low.flush_pad()
    binary = binary_output(section)
    if low.kind == "bits" and not binary:  # ends in a pool or dropout after the sign
        low.add(Unpack(low.shape, low.shape, "bits", "float"))
    if math.prod(low.shape) != math.prod(section.out_shape):  # pragma: no cover
        raise AssertionError(f"lowered shape {low.shape} != {section.out_shape}")
    body = low.ops
    feature_shape = low.shape
    num_logits = 0
    low.ops = []
    if section.exit_head is not None:
        for i, mods in enumerate(_blocks(section.exit_head)):  # type: ignore[arg-type]
            low.block(mods, f"{section.spec.name} exit block {i}")
        low.flush_pad()
        low.need_float()
        num_logits = math.prod(low.shape)
    return Lowered(body, low.ops, binary, feature_shape, num_logits)


def check_device(model: HierarchicalModel, device: int) -> Section:
    """Device section `device`, or a DdnnError saying why there is none."""
    if model.spec.device_section is None:
        raise DdnnError(
            f"model {model.spec.name!r} has no device section: nothing runs on an end device"
        )
    if not 0 <= device < len(model.devices):
        raise DdnnError(
            f"model {model.spec.name!r} has {len(model.devices)} device(s); "
            f"the device index must be in 0..{len(model.devices) - 1}, got {device}"
        )
    return model.devices[device]  # type: ignore[return-value]


def lower_device(model: HierarchicalModel, device: int) -> Lowered:
    """Lower device section `device` of a loaded model."""
    section = check_device(model, device)
    return lower_section(section, model.spec.mean, model.spec.std)
