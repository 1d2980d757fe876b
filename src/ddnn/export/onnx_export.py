"""`export_onnx`: one ONNX file per section, with named inputs and outputs.

Uses the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`, needs onnxscript;
works offline), the default since PyTorch 2.9; the TorchScript exporter is deprecated.
BinarySign traces to Where(x >= 0, 1, -1), never ONNX Sign, whose Sign(0) = 0 would be wrong.

Inputs and outputs of each file:
- `device<i>.onnx`: input `view` [B, C, h, w] in [0, 1] (normalization is inside); outputs
  `features` [B, ...] (+-1 floats for a binary section) and `logits` [B, C_exit] if it has an exit.
- `<section>.onnx` (edge, cloud): input `inputs`, the already fused input [B, *in_shape] (fuse
  device outputs with ddnn.model.fusion.fuse, which handles absent devices), or `view` in [0, 1]
  for a section on the raw input; outputs as above.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel, Section
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)

OPSET = 18
ID_KEY = "ddnn_model"  # metadata: which model, version and weights a file holds


class _NoTorchvisionNotice(logging.Filter):
    """torch's ONNX op registry logs a warning for each of four torchvision ops it skips when
    torchvision is absent, on every export: noise, since no ddnn section uses them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


_REGISTRY_LOG = "torch.onnx._internal.exporter._registration"
_NOTICE_FILTER = _NoTorchvisionNotice()


class _SectionGraph(nn.Module):
    """One section as a graph: optional input normalization, then body and exit head."""

    mean: Tensor
    std: Tensor

    def __init__(self, section: Section, mean: float | None, std: float | None) -> None:
        super().__init__()
        self.section = section
        self.normalized = mean is not None
        # float32 like HierarchicalModel's buffers
        self.register_buffer("mean", torch.tensor(mean if mean is not None else 0.0))
        self.register_buffer("std", torch.tensor(std if std is not None else 1.0))

    def run(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.normalized:
            x = (x - self.mean) / self.std  # as HierarchicalModel.normalize
        out = self.section(x)
        return (out.features,) if out.logits is None else (out.features, out.logits)


# The graph input is named after forward's argument: naming it through input_names instead can
# collide with an internal value of the same name (aten.view -> "view").
class _ViewGraph(_SectionGraph):
    def forward(self, view: Tensor) -> tuple[Tensor, ...]:
        return self.run(view)


class _FeatureGraph(_SectionGraph):
    def forward(self, inputs: Tensor) -> tuple[Tensor, ...]:
        return self.run(inputs)


def part_id(run_dir: str | Path, part: str) -> str:
    return open_model(run_dir).part_id(part)


def _graph(model: HierarchicalModel, part: str) -> _SectionGraph:
    """The module to export for a part."""
    if part.startswith("device") and part[6:].isdigit():
        section: Section = model.devices[int(part[6:])]  # type: ignore[assignment]
        return _ViewGraph(section, model.spec.mean, model.spec.std)
    section = model.upper[part]  # type: ignore[assignment]
    if section.spec.input == "raw":
        return _ViewGraph(section, model.spec.mean, model.spec.std)
    return _FeatureGraph(section, None, None)


def export_part(model: HierarchicalModel, part: str, path: Path, ident: str) -> Path:
    """Export one part of a loaded model to `path`."""
    import onnx

    graph = _graph(model, part)
    graph.eval()
    example = torch.rand(2, *graph.section.in_shape)  # [2, ...]: a batch of 2 keeps B dynamic
    outputs = ["features"] + (["logits"] if graph.section.exit_head is not None else [])
    logging.getLogger(_REGISTRY_LOG).addFilter(_NOTICE_FILTER)  # idempotent
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            output_names=outputs,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # one self-contained file: no `<part>.onnx.data` beside it
            verbose=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ID_KEY, ident
    onnx.save(proto, str(path))
    log.info("exported %s to %s", part, path)
    return path


def export_onnx(
    run_dir: str | Path, out_dir: str | Path, parts: Iterable[str] | None = None
) -> list[Path]:
    """Write `<part>.onnx` for every part (device0.., then edge / cloud) or only `parts`."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise DdnnError(
            "ONNX export needs onnx and onnxscript: pip install 'ddnn[export]'"
        ) from exc
    stored = open_model(run_dir)
    model = stored.load(parts)
    names = stored.parts
    wanted = names if parts is None else list(parts)
    unknown = [p for p in wanted if p not in names]
    if unknown:
        raise DdnnError(f"model has no part(s) {unknown}; parts: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [export_part(model, p, out / f"{p}.onnx", stored.part_id(p)) for p in wanted]
