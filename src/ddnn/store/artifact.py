"""Versioned model artifacts: `spec.json` (architecture, tier mapping, thresholds, class names,
input normalization, version, file hashes) and `weights/<part>.safetensors`, one per device and per
upper section, so a device is shipped only its own weights. Nothing is ever unpickled."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ddnn.config import from_dict, to_dict
from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.spec import ModelSpec
from ddnn.store.durable import (
    first_non_finite,
    json_bytes,
    replace_files,
    safetensors_bytes,
    sha256_hex,
)

log = logging.getLogger(__name__)

FORMAT = "ddnn-model/1"
SPEC_FILE = "spec.json"


def part_names(model: HierarchicalModel) -> list[str]:
    """device0..device{N-1} for the device sections, then the upper sections by name."""
    return [f"device{i}" for i in range(len(model.devices))] + list(model.upper)


def _part_module(model: HierarchicalModel, part: str) -> Any:
    if part.startswith("device") and part[6:].isdigit() and int(part[6:]) < len(model.devices):
        return model.devices[int(part[6:])]
    if part in model.upper:
        return model.upper[part]
    raise DdnnError(f"model has no part {part!r}; parts: {part_names(model)}")


def _sha256(path: Path) -> str:
    return sha256_hex(path.read_bytes())


def save_model(
    model: HierarchicalModel,
    folder: str | Path,
    version: int = 1,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write spec.json and one safetensors file per part into `folder`; returns the folder.
    One atomic save (store.durable): a failed write raises SaveError and leaves the previous
    version loadable. The same model gives byte-identical weight files (no times in them)."""
    folder = Path(folder)
    files, hashes = {}, {}
    meta = {"model": model.spec.name, "version": str(version)}
    for part in part_names(model):
        state = {
            k: v.detach().contiguous() for k, v in _part_module(model, part).state_dict().items()
        }
        bad = first_non_finite(state)
        if bad is not None:
            raise DdnnError(
                f"{part}.{bad} holds NaN or infinite values: not saving a diverged model to "
                f"{folder}; train again with a lower learning rate"
            )
        data = safetensors_bytes(state, meta | {"part": part})
        files[f"weights/{part}.safetensors"] = data
        hashes[part] = sha256_hex(data)
    doc = {
        "format": FORMAT,
        "name": model.spec.name,
        "version": version,
        "parent": parent,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": to_dict(model.spec),
        "weights": hashes,
        "metrics": metrics or {},
    }
    files[SPEC_FILE] = json_bytes(doc)  # last: it holds the hashes, so it switches the set
    replace_files(folder, files)
    log.info("saved %s v%d to %s", model.spec.name, version, folder)
    return folder


def read_spec_doc(folder: str | Path) -> dict[str, Any]:
    """The parsed spec.json of a stored model, checked for the format this code understands."""
    path = Path(folder) / SPEC_FILE
    if not Path(folder).is_dir():
        raise DdnnError(
            f"{folder} is not a folder (expected a run or model folder from ddnn train)"
        )
    if not path.is_file():
        raise DdnnError(f"{folder} has no {SPEC_FILE}: not a ddnn model folder")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DdnnError(f"{path} is not valid JSON: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise DdnnError(
            f"{path}: unknown model format {doc.get('format')!r}; this ddnn reads {FORMAT!r}"
        )
    return doc


def read_spec(folder: str | Path) -> ModelSpec:
    spec = from_dict(ModelSpec, read_spec_doc(folder)["model"], "model")
    spec.validate()
    return spec


def load_model(folder: str | Path, parts: Iterable[str] | None = None) -> HierarchicalModel:
    """Rebuild the model and load the weights of `parts` (all when None), checking each file's
    hash against the spec. A part not loaded keeps its initial weights: a device needs only its
    own file."""
    folder = Path(folder)
    doc = read_spec_doc(folder)
    model = HierarchicalModel(read_spec(folder))
    wanted = part_names(model) if parts is None else list(parts)
    for part in wanted:
        module = _part_module(model, part)
        path = folder / "weights" / f"{part}.safetensors"
        if not path.is_file():
            raise DdnnError(f"{path} is missing: the model folder is incomplete")
        expected = doc.get("weights", {}).get(part)
        if expected != _sha256(path):
            raise DdnnError(f"{path} does not match the hash in {SPEC_FILE}: tampered or corrupt")
        try:
            module.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as exc:
            raise DdnnError(f"{path} does not fit the spec's architecture: {exc}") from exc
    model.eval()
    return model


def update_spec(folder: str | Path, **fields: Any) -> None:
    """Rewrite top-level fields of spec.json (thresholds after calibration, metrics)."""
    doc = read_spec_doc(folder)
    doc.update(fields)
    replace_files(Path(folder), {SPEC_FILE: json_bytes(doc)})
