"""Layer checks and shape inference over a model spec, in plain Python, before a module exists.

PyTorch finds a kernel larger than its input, a conv after a flattening layer or a pool of 0 only
when a batch runs, with a traceback that names no layer; here the input shape walks through every
layer of every section first and an error names the section, the layer and the field.
nn/blocks.py builds the modules: `LAYER_FIELDS` and `layer_shape` follow its `_block`, and
tests/foundation/test_spec_checks.py checks them against the modules it builds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ddnn.errors import DdnnError

if TYPE_CHECKING:
    from ddnn.model.spec import ModelSpec, SectionSpec
    from ddnn.nn.layer import LayerSpec

Shape = tuple[int, ...]  # per-sample shape, without the batch dimension

# The fields each layer type's block reads (nn/blocks.py `_block`). Any other field set away from
# its default would be dropped silently (stride on a pool, batch_norm on a bconv), so it is refused.
LAYER_FIELDS: dict[str, frozenset[str]] = {
    "conv": frozenset({"out", "kernel", "stride", "padding", "pool", "activation", "batch_norm"}),
    "bconv": frozenset({"out", "kernel", "stride", "padding", "pool"}),
    "linear": frozenset({"out", "activation", "batch_norm"}),
    "blinear": frozenset({"out", "activation"}),
    "pool": frozenset({"pool"}),
    "pad": frozenset({"padding"}),
    "dropout": frozenset({"p"}),
}
WEIGHTED = ("conv", "bconv", "linear", "blinear")  # the types with an `out`
Where = Callable[[int, "LayerSpec"], str]  # (index, layer) -> how an error names the layer


def refuse_unused_fields(where: str, layer_type: str, given: Iterable[str]) -> None:
    """Raise when `given` names a field that a layer of `layer_type` does not read."""
    unused = sorted(set(given) - LAYER_FIELDS[layer_type] - {"type"})
    if unused:
        raise DdnnError(
            f"{where}: {', '.join(unused)} has no effect on a {layer_type} layer, which reads "
            f"only {', '.join(sorted(LAYER_FIELDS[layer_type]))}; remove it"
        )


def check_layer(layer: LayerSpec, where: str, last_of_exit: bool) -> None:
    """The checks that need no input shape: fields used, and in range."""
    changed = [f.name for f in dataclasses.fields(layer) if getattr(layer, f.name) != f.default]
    refuse_unused_fields(where, layer.type, changed)  # fields away from their defaults
    if layer.type in WEIGHTED and (layer.out < 0 or (layer.out == 0 and not last_of_exit)):
        raise DdnnError(
            f"{where}: out must be >= 1, got {layer.out} (out = 0, one output per class, only "
            "on the last layer of an exit)"
        )
    if layer.type in ("conv", "bconv"):
        for name in ("kernel", "stride"):
            if getattr(layer, name) < 1:
                raise DdnnError(f"{where}: {name} must be >= 1, got {getattr(layer, name)}")
    if layer.pool < 1:
        raise DdnnError(f"{where}: pool must be >= 1 (1: no pooling), got {layer.pool}")
    if layer.type == "pad" and layer.padding is None:
        raise DdnnError(f"{where}: a pad layer needs `padding`, the zeros added on each side")
    if layer.padding is not None and layer.padding < 0:
        raise DdnnError(
            f"{where}: padding must be >= 0, got {layer.padding} (negative padding would crop; "
            "crop with the model's views instead)"
        )
    if not 0.0 <= layer.p < 1.0:
        raise DdnnError(f"{where}: dropout p must be in [0, 1), got {layer.p}")


def layer_shape(layer: LayerSpec, shape: Shape, out: int, where: str) -> Shape:
    """The per-sample shape a checked layer makes of `shape`; `out` replaces an `out` of 0."""
    if layer.type in ("linear", "blinear"):
        return (out,)  # after a flatten
    if layer.type == "dropout":
        return shape
    if len(shape) != 3:
        raise DdnnError(
            f"{where}: a {layer.type} layer needs an image (C, H, W) but receives {len(shape)}-d "
            f"features {list(shape)} from the layer before; put {layer.type} layers before the "
            "linear ones"
        )
    c, h, w = shape
    if layer.type == "pad":
        p = layer.padding or 0
        return (c, h + 2 * p, w + 2 * p)
    if layer.type in ("conv", "bconv"):
        k, s, p = layer.kernel, layer.stride, layer.conv_padding
        if k > min(h, w) + 2 * p:
            raise DdnnError(
                f"{where}: kernel {k} is larger than its input {h}x{w} padded by {p}; use a "
                "smaller kernel, more padding or less pooling before it"
            )
        c, h, w = out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    if layer.pool > min(h, w):
        raise DdnnError(f"{where}: pool {layer.pool} is larger than the {h}x{w} it pools")
    return (c, h // layer.pool, w // layer.pool)


def stack_shape(layers: Sequence[LayerSpec], shape: Shape, final_out: int, where: Where) -> Shape:
    """Walk `shape` through a checked stack; a last layer with `out = 0` gets `final_out`."""
    for i, layer in enumerate(layers):
        out = layer.out or final_out
        shape = layer_shape(layer, shape, out, where(i, layer))
    return shape


def layer_where(model: object, section: object, exit: bool, index: int, layer_type: object) -> str:
    """How an error names a layer: model 'm' section 's' exit layer 2 (pool)."""
    part = "exit layer" if exit else "layer"
    return f"model {model!r} section {section!r} {part} {index} ({layer_type})"


def _where(spec: ModelSpec, section: SectionSpec, exit: bool) -> Where:
    return lambda i, layer: layer_where(spec.name, section.name, exit, i, layer.type)


def check_layers(spec: ModelSpec) -> None:
    """Every layer of every section and exit: fields used and in range."""
    for s in spec.sections:
        for i, layer in enumerate(s.layers):
            check_layer(layer, _where(spec, s, False)(i, layer), last_of_exit=False)
        exit_layers = s.exit.layers if s.exit is not None else ()
        for i, layer in enumerate(exit_layers):
            last = i == len(exit_layers) - 1
            check_layer(layer, _where(spec, s, True)(i, layer), last_of_exit=last)


def fused_shape(shape: Shape, devices: int, how: str) -> Shape:
    """Per-sample shape after fusing `devices` inputs of per-sample `shape`."""
    if how == "concat" and devices > 1:
        return (shape[0] * devices, *shape[1:])
    return shape


def section_shapes(spec: ModelSpec) -> dict[str, tuple[Shape, Shape]]:
    """Section name -> (input shape, output shape) of a spec with its dataset facts, raising a
    DdnnError at the first layer that cannot take its input or an exit that does not end in one
    logit per class. The walk is the one HierarchicalModel builds."""
    shapes: dict[str, tuple[Shape, Shape]] = {}
    shape, count = spec.view_shape, spec.devices
    for s in spec.sections:
        if s.tier == "device":
            in_shape = shape  # each device its own view
        elif s.input == "raw":
            in_shape = fused_shape(spec.view_shape, spec.devices, s.aggregate)
        else:
            in_shape = fused_shape(shape, count, s.aggregate)
        out_shape = stack_shape(s.layers, in_shape, 0, _where(spec, s, False))
        if s.exit is not None:
            classes = spec.exit_num_classes(s)
            logits = stack_shape(s.exit.layers, out_shape, classes, _where(spec, s, True))
            if logits != (classes,):
                raise DdnnError(
                    f"model {spec.name!r} section {s.name!r}: the exit makes {list(logits)} "
                    f"values a sample but needs {classes} logits, one per class; end it with a "
                    "linear layer whose out is 0"
                )
        shapes[s.name] = (in_shape, out_shape)
        shape, count = out_shape, spec.devices if s.tier == "device" else 1
    return shapes


def _binary_kept_as_float(layers: Sequence[LayerSpec]) -> int | None:
    """The index of the layer whose +-1 output leaves the section as float32 because only a pool
    or dropout follows its sign (the wire packs a section's features only when it ends in the
    sign itself); None when the section ends packed or is not binary."""
    for j in range(len(layers) - 1, -1, -1):
        layer = layers[j]
        if layer.type in ("pool", "dropout"):
            continue
        signs = layer.type == "bconv" or (layer.type in WEIGHTED and layer.activation == "sign")
        pools_after_sign = layer.type == "conv" and layer.pool > 1
        if signs and (j < len(layers) - 1 or pools_after_sign):
            return j
        return None
    return None


def float_feature_warnings(spec: ModelSpec) -> list[str]:
    """Warnings for sections whose +-1 features would travel as float32, 32x the packed bytes."""
    shapes = section_shapes(spec)
    warnings = []
    for s, nxt in zip(spec.sections, spec.sections[1:], strict=False):
        j = _binary_kept_as_float(s.layers)
        if j is None or nxt.input == "raw":
            continue
        n = math.prod(shapes[s.name][1])
        warnings.append(
            f"model {spec.name!r} section {s.name!r}: layer {j} ({s.layers[j].type}) is binary "
            f"but a pool or dropout after its sign makes the section send float32 features, "
            f"{4 * n} B a sample instead of {math.ceil(n / 8)} B packed; end the section with "
            "the sign (a bconv's own `pool` pools before it)"
        )
    return warnings
