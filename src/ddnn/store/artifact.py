"""Versioned model artifacts: `spec.json` (architecture, tier mapping, thresholds, class names,
input normalization, version, file hashes) and `weights/<part>.safetensors`, one per device and per
upper section, so a device is shipped only its own weights. Nothing is ever unpickled."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ddnn.config import from_dict, to_dict
from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.spec import ModelSpec
from ddnn.names import IDENTIFIER, IDENTIFIER_RULE

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
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_model(
    model: HierarchicalModel,
    folder: str | Path,
    version: int = 1,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write spec.json and one safetensors file per part into `folder`; returns the folder."""
    folder = Path(folder)
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    hashes = {}
    meta = {"model": model.spec.name, "version": str(version)}
    for part in part_names(model):
        path = folder / "weights" / f"{part}.safetensors"
        state = {
            k: v.detach().contiguous() for k, v in _part_module(model, part).state_dict().items()
        }
        save_file(state, str(path), metadata=meta | {"part": part})
        hashes[part] = _sha256(path)
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
    (folder / SPEC_FILE).write_text(json.dumps(doc, indent=2))
    log.info("saved %s v%d to %s", model.spec.name, version, folder)
    return folder


def read_spec_doc(folder: str | Path) -> dict[str, Any]:
    """The parsed spec.json of a stored model, checked for the format this code understands and
    for the type of every top-level field, so a damaged file fails here, naming the field."""
    path = Path(folder) / SPEC_FILE
    if not Path(folder).is_dir():
        raise DdnnError(
            f"{folder} is not a folder (expected a run or model folder from ddnn train)"
        )
    if not path.is_file():
        raise DdnnError(f"{folder} has no {SPEC_FILE}: not a ddnn model folder")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DdnnError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DdnnError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise DdnnError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise DdnnError(
            f"{path}: unknown model format {doc.get('format')!r}; this ddnn reads {FORMAT!r}"
        )
    _check_doc_fields(path, doc)
    return doc


MAX_VERSION = 0xFFFF  # the wire carries a model's version in 16 bits
# field -> (types it may have, what it should be), for the message
_DOC_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "the model name"),
    "version": ((int,), f"an integer version 1..{MAX_VERSION}"),
    "parent": ((str, type(None)), "the parent model's folder or null"),
    "created": ((str,), "a UTC time stamp"),
    "model": ((dict,), "the model spec, an object"),
    "weights": ((dict,), "an object of part -> SHA-256"),
    "metrics": ((dict,), "an object"),
}


def _check_doc_fields(path: Path, doc: dict[str, Any]) -> None:
    for key, (types, what) in _DOC_FIELDS.items():
        if key not in doc:
            raise DdnnError(f"{path}: no {key!r} field ({what}): damaged or not written by ddnn")
        value = doc[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise DdnnError(f"{path}: {key!r} must be {what}, got {value!r:.60}")
    if not IDENTIFIER.fullmatch(doc["name"]):
        raise DdnnError(f"{path}: model name {doc['name']!r} is invalid: {IDENTIFIER_RULE}")
    if not 1 <= doc["version"] <= MAX_VERSION:
        raise DdnnError(f"{path}: 'version' must be 1..{MAX_VERSION}, got {doc['version']}")
    for part, digest in doc["weights"].items():
        if not isinstance(digest, str):
            raise DdnnError(f"{path}: weights[{part!r}] must be a SHA-256 string, got {digest!r}")


def read_spec(folder: str | Path) -> ModelSpec:
    """The checked model spec of a stored model; a bad spec names the file."""
    doc = read_spec_doc(folder)
    try:
        spec = from_dict(ModelSpec, doc["model"], "model")
        spec.validate()
    except DdnnError as exc:
        raise DdnnError(f"{Path(folder) / SPEC_FILE}: {exc}") from exc
    if spec.name != doc["name"]:
        raise DdnnError(
            f"{Path(folder) / SPEC_FILE}: 'name' {doc['name']!r} differs from the spec's "
            f"{spec.name!r}"
        )
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
    path = Path(folder) / SPEC_FILE
    doc = read_spec_doc(folder)
    doc.update(fields)
    path.write_text(json.dumps(doc, indent=2))
