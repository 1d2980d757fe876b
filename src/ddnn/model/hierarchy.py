"""The hierarchical early-exit model: device sections (one per end device), then edge and cloud.

Every section is callable on its own with named tensors (features in, features and exit logits
out), so the same weights run in one process for training, or split across processes at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddnn.model.fusion import fuse
from ddnn.model.shapes import fused_shape
from ddnn.model.spec import ModelSpec, SectionSpec
from ddnn.nn.blocks import Shape, build_layers


@dataclass
class SectionOutput:
    features: Tensor  # [B, ...] what the next tier would receive
    logits: Tensor | None  # [B, C_exit] or None when the section has no exit


class Section(nn.Module):
    """One tier's layers plus its optional exit head."""

    def __init__(self, spec: SectionSpec, in_shape: Shape, exit_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.in_shape = in_shape
        self.body, self.out_shape = build_layers(spec.layers, in_shape)
        self.exit_head: nn.Module | None = None
        if spec.exit is not None:
            self.exit_head, _ = build_layers(spec.exit.layers, self.out_shape, exit_classes)

    def forward(self, x: Tensor) -> SectionOutput:
        feats = self.body(x)  # [B, *out_shape]
        logits = self.exit_head(feats) if self.exit_head is not None else None
        return SectionOutput(feats, logits)


class HierarchicalModel(nn.Module):
    """device sections (x devices) -> [edge] -> cloud, each with an optional exit."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        spec.validate()
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std), persistent=False)
        view_shape: Shape = spec.view_shape
        dev = spec.device_section
        self.devices = nn.ModuleList()
        prev_shape: Shape = view_shape
        prev_count = spec.devices  # how many inputs the next section fuses
        if dev is not None:
            for _ in range(spec.devices):
                self.devices.append(Section(dev, view_shape, self._exit_classes(dev)))
            prev_shape = self.devices[0].out_shape
        self.upper = nn.ModuleDict()
        for s in spec.sections[1 if dev is not None else 0 :]:
            src_shape, src_count = (
                (view_shape, spec.devices)
                if s.input == "raw"
                else (
                    prev_shape,
                    prev_count,
                )
            )
            in_shape = fused_shape(src_shape, src_count, s.aggregate)
            section = Section(s, in_shape, self._exit_classes(s))
            self.upper[s.name] = section
            prev_shape, prev_count = section.out_shape, 1

    def _exit_classes(self, s: SectionSpec) -> int:
        return self.spec.exit_num_classes(s) if s.exit is not None else 0

    # -- the pieces the runtime calls --------------------------------------------------------

    def normalize(self, x: Tensor) -> Tensor:
        """Raw input in [0, 1] -> the normalized input the first layers were trained on."""
        return (x - self.mean) / self.std

    def run_device(self, index: int, view: Tensor) -> SectionOutput:
        """Device `index` on its own view [B, C, h, w] (values in [0, 1])."""
        return self.devices[index](self.normalize(view))

    def fuse_device_exits(self, logits: Tensor, present: Tensor | None) -> Tensor:
        """The local aggregator: per-device exit logits [B, D, C] -> fused [B, C]."""
        dev = self.spec.device_section
        assert dev is not None and dev.exit is not None
        return fuse(logits, present, dev.exit.aggregate)

    def run_upper(self, name: str, inputs: Tensor, present: Tensor | None = None) -> SectionOutput:
        """An edge or cloud section. inputs [B, D, ...] when it fuses D devices (features, or raw
        views in [0, 1] for a raw-input section), else [B, ...]."""
        section: Section = self.upper[name]  # type: ignore[assignment]
        spec = section.spec
        if spec.input == "raw":
            inputs = self.normalize(inputs)
        if inputs.dim() == len(section.in_shape) + 2 or spec.input == "raw":
            inputs = fuse(inputs, present, spec.aggregate)
        return section(inputs)

    # -- the whole model in one process ------------------------------------------------------

    def forward(self, views: Tensor, present: Tensor | None = None) -> dict[str, Tensor]:
        """views [B, D, C, h, w] in [0, 1], present [B, D] bool -> exit name -> logits [B, C_exit].

        Every exit is computed for every sample: the exit policy (evaluate/) picks later, which is
        what joint training and threshold sweeps need.
        """
        out: dict[str, Tensor] = {}
        prev: Tensor | None = None
        dev = self.spec.device_section
        if dev is not None:
            results = [self.run_device(i, views[:, i]) for i in range(len(self.devices))]
            prev = torch.stack([r.features for r in results], dim=1)  # [B, D, ...]
            if dev.exit is not None:
                per_device = torch.stack([r.logits for r in results], dim=1)  # type: ignore[misc]
                out[dev.name] = self.fuse_device_exits(per_device, present)
        for name, section in self.upper.items():
            src = views if section.spec.input == "raw" or prev is None else prev
            result = self.run_upper(name, src, present)
            prev = result.features
            present = None  # after the first fusion there is one stream
            if result.logits is not None:
                out[name] = result.logits
        return out
