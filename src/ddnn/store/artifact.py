"""Versioned model artifacts: `spec.json` (architecture, tier mapping, thresholds, class names,
input normalization, version, file hashes) and `weights/<part>.safetensors`, one per device and per
upper section, so a device is shipped only its own weights. Nothing is ever unpickled."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load

from ddnn.config import from_dict, to_dict
from ddnn.data.source import DataSource
from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.spec import ModelSpec
from ddnn.names import IDENTIFIER, IDENTIFIER_RULE
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
    return _spec_parts(model.spec)


def _spec_parts(spec: ModelSpec) -> list[str]:
    if spec.device_section is None:
        return [s.name for s in spec.sections]
    return [f"device{i}" for i in range(spec.devices)] + [s.name for s in spec.sections[1:]]


def _part_module(model: HierarchicalModel, part: str) -> Any:
    if part.startswith("device") and part[6:].isdigit() and int(part[6:]) < len(model.devices):
        return model.devices[int(part[6:])]
    if part in model.upper:
        return model.upper[part]
    raise DdnnError(f"model has no part {part!r}; parts: {part_names(model)}")


def save_model(
    model: HierarchicalModel,
    folder: str | Path,
    version: int = 1,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    *,
    data: DataSource | None = None,
) -> Path:
    """Write spec.json and one safetensors file per part into `folder`; returns the folder.
    One atomic save (store.durable): a failed write raises SaveError and leaves the previous
    version loadable. The same model gives byte-identical weight files (no times in them).
    `data` records where the training data came from (the `data` entry)."""
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
        blob = safetensors_bytes(state, meta | {"part": part})
        files[f"weights/{part}.safetensors"] = blob
        hashes[part] = sha256_hex(blob)
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
    if data is not None:
        doc["data"] = data.to_dict()
    files[SPEC_FILE] = json_bytes(doc)  # last: it holds the hashes, so it switches the set
    replace_files(folder, files)
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


def _checked_spec(folder: str | Path, doc: dict[str, Any]) -> ModelSpec:
    """The model spec in a spec.json document, checked; a bad spec names the file."""
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


@dataclass(frozen=True)
class StoredModel:
    """A stored model as its spec.json describes it, read and checked once (`open_model`).

    Callers take the name, version, spec and hashes from here instead of picking the JSON apart;
    `load` builds the network and loads weights checked against `hashes`.
    """

    folder: Path
    name: str
    version: int
    parent: str | None  # the folder it was fine-tuned from
    created: str  # UTC, ISO 8601
    spec: ModelSpec
    hashes: dict[str, str]  # part -> SHA-256 of weights/<part>.safetensors
    metrics: dict[str, Any]
    # the data it was trained on: spec.json's `data` entry, or (older runs) the dataset name
    # the training metrics recorded
    data: DataSource | None = None

    @property
    def dataset(self) -> str | None:
        return None if self.data is None else self.data.dataset

    @classmethod
    def read(cls, folder: str | Path) -> StoredModel:
        doc = read_spec_doc(folder)
        spec = _checked_spec(folder, doc)
        metrics = doc.get("metrics") or {}
        dataset = metrics.get("dataset")
        if doc.get("data"):
            data: DataSource | None = DataSource.from_dict(doc["data"])
        else:
            data = DataSource(str(dataset)) if dataset else None
        return cls(
            folder=Path(folder),
            name=str(doc["name"]),
            version=int(doc["version"]),
            parent=doc.get("parent"),
            created=str(doc.get("created", "")),
            spec=spec,
            hashes=dict(doc.get("weights", {})),
            metrics=metrics,
            data=data,
        )

    def data_source(self, dataset: str | None = None, data_dir: str | None = None) -> DataSource:
        """Where to read this model's data: as recorded, overridden by --dataset / --data-dir."""
        if self.data is None:
            if dataset is None:
                raise DdnnError(f"{self.folder}: the dataset is not recorded; pass --dataset")
            return DataSource.of(dataset, data_dir)
        return self.data.overridden(dataset, data_dir)

    @property
    def parts(self) -> list[str]:
        """The weight files' parts, as `part_names` lists them, from the spec alone."""
        return _spec_parts(self.spec)

    def weights_path(self, part: str) -> Path:
        return self.folder / "weights" / f"{part}.safetensors"

    def part_id(self, part: str) -> str:
        """Names the exact weights of one part, so an export built from other weights is noticed."""
        return f"{self.name} v{self.version} {part} weights {self.hashes.get(part, '')[:12]}"

    def load(self, parts: Iterable[str] | None = None) -> HierarchicalModel:
        """Rebuild the model and load the weights of `parts` (all when None), checking each
        file's hash against the spec. A part not loaded keeps its initial weights: a device
        needs only its own file."""
        model = HierarchicalModel(self.spec)
        for part in self.parts if parts is None else list(parts):
            module = _part_module(model, part)
            path = self.weights_path(part)
            if not path.is_file():
                raise DdnnError(f"{path} is missing: the model folder is incomplete")
            data = path.read_bytes()  # read once: the bytes hashed are the bytes loaded
            if self.hashes.get(part) != sha256_hex(data):
                raise DdnnError(
                    f"{path} does not match the hash in {SPEC_FILE}: tampered or corrupt"
                )
            try:
                module.load_state_dict(load(data), strict=True)
            except RuntimeError as exc:
                raise DdnnError(f"{path} does not fit the spec's architecture: {exc}") from exc
        model.eval()
        return model


def open_model(folder: str | Path) -> StoredModel:
    """The stored model in `folder`, its spec.json read once and checked."""
    return StoredModel.read(folder)


def read_spec(folder: str | Path) -> ModelSpec:
    return open_model(folder).spec


def load_model(folder: str | Path, parts: Iterable[str] | None = None) -> HierarchicalModel:
    """`open_model(folder).load(parts)`: for callers that need only the network."""
    return open_model(folder).load(parts)


def update_spec(folder: str | Path, **fields: Any) -> None:
    """Rewrite top-level fields of spec.json (thresholds after calibration, metrics)."""
    doc = read_spec_doc(folder)
    doc.update(fields)
    replace_files(Path(folder), {SPEC_FILE: json_bytes(doc)})
