"""The model spec: which layers form each tier's section, where the exits are, how devices fuse.

The network itself is tier-agnostic; this spec is the partition. It is stored beside the weights
(store/), so a device, an edge or a server can rebuild just the section it runs.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace

from ddnn.errors import DdnnError
from ddnn.model.shapes import check_layers, float_feature_warnings, section_shapes
from ddnn.names import IDENTIFIER, IDENTIFIER_RULE
from ddnn.nn.layer import LayerSpec  # the layers are built by nn/, which reads this spec

log = logging.getLogger(__name__)

TIERS = ("device", "edge", "cloud")
LAYER_TYPES = ("conv", "bconv", "linear", "blinear", "pool", "pad", "dropout")
ACTIVATIONS = ("relu", "tanh", "sign", "none")
AGGREGATORS = ("max", "avg", "concat")
# a section names a weights file and a torch submodule (whose names cannot hold '.')
_SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DEVICE_PART = re.compile(r"device[0-9]+")  # the weights of device i: no upper section's name


@dataclass(frozen=True)
class ExitSpec:
    """An early exit: a small classifier after a section and the entropy threshold it uses."""

    layers: tuple[LayerSpec, ...]
    threshold: float = 0.5
    weight: float = 1.0  # weight of this exit's cross-entropy in the joint loss
    classes: tuple[int, ...] | None = None  # prioritized classes (Big-Little); adds "other"
    aggregate: str = "max"  # fuses the devices' exit scores when there are several devices


@dataclass(frozen=True)
class SectionSpec:
    """The layers one tier runs, fed by the previous section's features or by the raw input."""

    name: str
    tier: str
    layers: tuple[LayerSpec, ...] = ()
    input: str = "previous"  # "previous" or "raw" (Big-Little's big net sees the raw input)
    aggregate: str = "concat"  # fuses the devices' features entering this section
    exit: ExitSpec | None = None


VIEW_KINDS = ("full", "crops", "corners", "channels")


@dataclass(frozen=True)
class ViewSpec:
    """What each end device sees of a sample: the full image, one crop per device, or (data
    with one camera per device) its own camera's image, the views stacked along channels.

    "corners" is a preset's size-free way to say crops: `fraction` of the height and width at
    each corner, turned into "crops" for the data's image size when the model is built."""

    kind: str = "full"  # one of VIEW_KINDS
    size: tuple[int, int] = (0, 0)  # crop height, width (crops only)
    offsets: tuple[tuple[int, int], ...] = ()  # top-left (y, x) per device (crops only)
    fraction: float = 0.0  # crop side / image side (corners only)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture plus tier mapping; dataset facts (classes, shape, normalization) are filled in
    when a model is built for a dataset."""

    name: str
    sections: tuple[SectionSpec, ...]
    devices: int = 1
    views: ViewSpec = field(default_factory=ViewSpec)
    num_classes: int = 0
    input_shape: tuple[int, int, int] = (0, 0, 0)  # C, H, W of a full sample
    class_names: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def view_shape(self) -> tuple[int, int, int]:
        """C, h, w of the input one device sees."""
        if self.views.kind == "full":
            return self.input_shape
        if self.views.kind == "channels":
            return (self.input_shape[0] // self.devices, *self.input_shape[1:])
        return (self.input_shape[0], *self.views.size)

    @property
    def exit_sections(self) -> tuple[SectionSpec, ...]:
        """Sections with an exit, in the order a sample meets them."""
        return tuple(s for s in self.sections if s.exit is not None)

    @property
    def device_section(self) -> SectionSpec | None:
        first = self.sections[0]
        return first if first.tier == "device" else None

    def section(self, name: str) -> SectionSpec:
        for s in self.sections:
            if s.name == name:
                return s
        raise DdnnError(f"no section {name!r}; sections: {[s.name for s in self.sections]}")

    def exit_num_classes(self, section: SectionSpec) -> int:
        assert section.exit is not None
        classes = section.exit.classes
        return self.num_classes if classes is None else len(classes) + 1

    def with_dataset(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        class_names: tuple[str, ...],
        mean: float,
        std: float,
        *,
        views: int = 1,
    ) -> ModelSpec:
        """This spec for a dataset; `views` > 1: the data has one camera per device."""
        spec = replace(
            self,
            num_classes=num_classes,
            input_shape=input_shape,
            class_names=class_names,
            mean=mean,
            std=std,
        )
        spec = fit_views(spec, views)
        spec.validate()
        for warning in float_feature_warnings(spec):
            log.warning("%s", warning)
        return spec

    def with_thresholds(self, thresholds: dict[str, float]) -> ModelSpec:
        """A copy whose non-final exits use `thresholds` (section name -> T)."""
        sections = []
        for s in self.sections:
            if s.exit is not None and s.name in thresholds:
                s = replace(s, exit=replace(s.exit, threshold=float(thresholds[s.name])))
            sections.append(s)
        return replace(self, sections=tuple(sections))

    @property
    def thresholds(self) -> dict[str, float]:
        """Thresholds of the exits that can stop a sample early (all but the final one)."""
        exits = self.exit_sections[:-1]
        return {s.name: s.exit.threshold for s in exits if s.exit is not None}

    @property
    def has_dataset(self) -> bool:
        """Whether the dataset facts are filled in (a spec from a preset has none yet)."""
        return self.num_classes > 0 or any(self.input_shape)

    def validate(self) -> None:
        """Raise DdnnError naming the first thing wrong with this spec. Without dataset facts the
        checks that need them (classes, crops, shapes through every layer) wait for
        `with_dataset`."""
        if not isinstance(self.name, str) or not IDENTIFIER.fullmatch(self.name):
            raise DdnnError(f"model name {self.name!r} is invalid: {IDENTIFIER_RULE}")
        if not self.sections:
            raise DdnnError(f"model {self.name!r} has no sections")
        if self.devices < 1:
            raise DdnnError(f"model {self.name!r}: devices must be >= 1, got {self.devices}")
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise DdnnError(f"model {self.name!r}: section names repeat: {names}")
        order = [TIERS.index(s.tier) if s.tier in TIERS else -1 for s in self.sections]
        if -1 in order:
            raise DdnnError(f"model {self.name!r}: tier must be one of {TIERS}")
        if order != sorted(order) or len(set(order)) != len(order):
            raise DdnnError(
                f"model {self.name!r}: at most one section per tier, in the order {TIERS}"
            )
        if self.sections[-1].exit is None:
            raise DdnnError(f"model {self.name!r}: the last section needs an exit (final exit)")
        if self.devices > 1 and self.device_section is None:
            raise DdnnError(f"model {self.name!r}: several devices need a device-tier section")
        for i, s in enumerate(self.sections):
            self._validate_section(s, first=i == 0)
        check_layers(self)
        if self.has_dataset:
            self._validate_dataset()

    def _validate_dataset(self) -> None:
        if self.num_classes < 1 or min(self.input_shape) < 1:
            raise DdnnError(
                f"model {self.name!r}: {self.num_classes} classes and input shape "
                f"{list(self.input_shape)}: both must be positive"
            )
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise DdnnError(
                f"model {self.name!r}: input normalization mean {self.mean}, std {self.std}: "
                "both must be finite and std > 0"
            )
        for s in self.exit_sections:
            assert s.exit is not None
            for c in s.exit.classes or ():
                if not 0 <= c < self.num_classes:
                    raise DdnnError(
                        f"model {self.name!r} section {s.name!r}: prioritized class {c} is not "
                        f"a class of the data (0..{self.num_classes - 1})"
                    )
        self._validate_views()
        section_shapes(self)

    def _validate_section(self, s: SectionSpec, first: bool) -> None:
        where = f"model {self.name!r} section {s.name!r}"
        if not _SECTION_NAME.fullmatch(s.name):
            raise DdnnError(
                f"model {self.name!r}: section name {s.name!r} is invalid: use 1-64 letters, "
                "digits, '_' or '-', starting with a letter or digit"
            )
        if s.tier != "device" and _DEVICE_PART.fullmatch(s.name):
            raise DdnnError(f"{where}: device<N> names the devices' weights; rename the section")
        if s.input not in ("previous", "raw"):
            raise DdnnError(f"{where}: input must be 'previous' or 'raw', got {s.input!r}")
        if s.aggregate not in AGGREGATORS:
            raise DdnnError(f"{where}: aggregate must be one of {AGGREGATORS}")
        layers = list(s.layers) + (list(s.exit.layers) if s.exit else [])
        for layer in layers:
            if layer.type not in LAYER_TYPES:
                raise DdnnError(f"{where}: layer type {layer.type!r}; valid: {LAYER_TYPES}")
            if layer.activation not in ACTIVATIONS:
                raise DdnnError(f"{where}: activation {layer.activation!r}; valid: {ACTIVATIONS}")
        if s.exit is not None:
            if s.exit.aggregate not in ("max", "avg"):
                raise DdnnError(f"{where}: exit aggregate must be 'max' or 'avg'")
            if not 0.0 <= s.exit.threshold <= 1.0:
                raise DdnnError(f"{where}: exit threshold must be in [0, 1]")

    def _validate_views(self) -> None:
        v = self.views
        if v.kind not in VIEW_KINDS:
            raise DdnnError(f"model {self.name!r}: views.kind must be one of {VIEW_KINDS}")
        if v.kind in ("full", "corners"):  # corners become crops when the data is known
            return
        if v.kind == "channels":
            if self.input_shape[0] % self.devices:
                raise DdnnError(
                    f"model {self.name!r}: {self.input_shape[0]} input channels do not split "
                    f"into {self.devices} device views"
                )
            return
        if len(v.offsets) != self.devices:
            raise DdnnError(
                f"model {self.name!r}: {len(v.offsets)} crop offsets for {self.devices} devices"
            )
        _, height, width = self.input_shape
        for y, x in v.offsets:
            if y < 0 or x < 0 or y + v.size[0] > height or x + v.size[1] > width:
                raise DdnnError(
                    f"model {self.name!r}: crop {v.size} at ({y}, {x}) leaves the "
                    f"{height}x{width} image"
                )


def fit_views(spec: ModelSpec, data_views: int = 1) -> ModelSpec:
    """The spec's views made concrete for its input shape: "corners" become crops of the
    image's size, and data with one camera per device makes each device see its camera."""
    v, (_, height, width) = spec.views, spec.input_shape
    if data_views > 1:
        if spec.devices != data_views:
            raise DdnnError(
                f"the data has {data_views} views (cameras) and model {spec.name!r} has "
                f"{spec.devices} devices; use a model with devices = {data_views}"
            )
        return replace(spec, views=ViewSpec(kind="channels"))
    if v.kind == "channels" and spec.devices > 1:
        raise DdnnError(
            f"model {spec.name!r} takes one camera per device; the data has a single view"
        )
    if v.kind != "corners":
        return spec
    if not 0.0 < v.fraction <= 1.0 or spec.devices > 4:
        raise DdnnError(
            f"model {spec.name!r}: corner views need 0 < fraction <= 1 and at most 4 devices"
        )
    h, w = max(1, round(height * v.fraction)), max(1, round(width * v.fraction))
    corners = ((0, 0), (0, width - w), (height - h, 0), (height - h, width - w))
    return replace(spec, views=ViewSpec(kind="crops", size=(h, w), offsets=corners[: spec.devices]))
