"""Reading a collection store (`store/collection.py` writes it): checked, summarised, labelled.

Every shard is checked against the manifest (size, SHA-256, its columns and their lengths)
before any of it is used; a store with a bad shard is refused as a whole, naming each bad shard
and what is wrong, so a half-written or edited store never becomes training data silently.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load

from ddnn.errors import DdnnError
from ddnn.store.collection import FORMAT, KINDS, MANIFEST
from ddnn.store.durable import sha256_hex

COLUMNS = ("x", "present", "cloud_pred", "cloud_exit", "cloud_entropy", "local_pred",
           "local_entropy", "frame_id", "seq", "time")  # fmt: skip
_ENTRY_KEYS = ("file", "records", "bytes", "sha256", "model", "version", "section", "kind")
LABEL_CLOUD, LABEL_GIVEN = 0, 1  # where a training label came from


class CorruptStore(DdnnError):
    """A collection store whose manifest or shards do not check out."""


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The store's manifest, its form checked; CorruptStore when it is not a store's."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DdnnError(f"{folder} is not a collection store: it has no {MANIFEST}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStore(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptStore(f"{path}: not a {FORMAT} manifest")
    shards = doc.get("shards")
    if not isinstance(shards, list) or not isinstance(doc.get("next_seq"), int):
        raise CorruptStore(f"{path}: needs a list of shards and next_seq")
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or any(k not in entry for k in _ENTRY_KEYS):
            raise CorruptStore(f"{path}: shard entry {i} lacks one of {', '.join(_ENTRY_KEYS)}")
        if entry["kind"] not in KINDS or Path(entry["file"]).name != entry["file"]:
            raise CorruptStore(f"{path}: shard entry {i} has a bad kind or file name")
    return doc


@dataclass
class Group:
    """The records of one (model, version, section, kind): their columns concatenated."""

    model: str
    version: int
    section: int
    kind: str
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["seq"])

    @property
    def name(self) -> str:
        return f"{self.model} v{self.version} section {self.section} ({self.kind})"


@dataclass
class Collection:
    folder: Path
    groups: list[Group]
    bytes: int  # on disk: shards and manifest
    shards: int

    def column(self, name: str) -> np.ndarray:
        """One column of every record (not `x`, whose shapes may differ between groups)."""
        parts = [g.columns[name] for g in self.groups]
        return np.concatenate(parts) if parts else np.zeros(0)

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)


def _check_shard(folder: Path, entry: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, str]:
    """(columns, "") or (None, what is wrong)."""
    path = folder / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if len(data) != entry["bytes"]:
        return None, f"{len(data)} bytes, the manifest says {entry['bytes']} (cut short?)"
    if sha256_hex(data) != entry["sha256"]:
        return None, "its SHA-256 does not match the manifest's (changed or damaged)"
    try:
        columns = load(data)
    except Exception as exc:  # safetensors raises its own error types
        return None, f"not a safetensors file ({exc})"
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        return None, f"lacks columns {', '.join(missing)}"
    lengths = {len(columns[c]) for c in COLUMNS}
    if lengths != {entry["records"]}:
        return None, f"columns of lengths {sorted(lengths)}, the manifest says {entry['records']}"
    return columns, ""


def load_collection(folder: str | Path) -> Collection:
    """Every record of the store, checked; CorruptStore naming every bad shard otherwise."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems, loaded = [], []
    for entry in manifest["shards"]:
        columns, problem = _check_shard(folder, entry)
        if columns is None:
            problems.append(f"{entry['file']}: {problem}")
        else:
            loaded.append((entry, columns))
    if problems:
        raise CorruptStore(
            f"collection store {folder} is corrupt, not loaded: {'; '.join(problems)}. Move the "
            "bad shards aside and remove their entries from manifest.json to use the rest"
        )
    groups: dict[tuple[Any, ...], list[dict[str, np.ndarray]]] = {}
    for entry, columns in loaded:
        key = (entry["model"], int(entry["version"]), int(entry["section"]), entry["kind"],
               columns["x"].shape[1:])  # fmt: skip
        groups.setdefault(key, []).append(columns)
    merged = [
        Group(m, v, s, k, {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS})
        for (m, v, s, k, _), parts in groups.items()
    ]
    size = sum(int(e["bytes"]) for e in manifest["shards"]) + (folder / MANIFEST).stat().st_size
    return Collection(folder, merged, size, len(manifest["shards"]))


# -- summary -------------------------------------------------------------------------------------

ENTROPY_BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.5)


def summarize(coll: Collection) -> dict[str, Any]:
    """Counts, size, versions, time span, the cloud's confidence and local/cloud agreement."""
    times, cloud = coll.column("time"), coll.column("cloud_pred")
    ent, local = coll.column("cloud_entropy"), coll.column("local_pred")
    has_local = local >= 0
    versions: Counter[str] = Counter()
    for g in coll.groups:
        versions[f"{g.model} v{g.version}"] += len(g)
    return {
        "records": len(coll),
        "bytes": coll.bytes,
        "shards": coll.shards,
        "groups": {g.name: len(g) for g in coll.groups},
        "versions": dict(versions),
        "first_time": float(times.min()) if len(times) else None,
        "last_time": float(times.max()) if len(times) else None,
        "cloud_entropy_median": float(np.median(ent)) if len(ent) else None,
        "cloud_entropy_at_most": {
            str(b): float((ent <= b).mean()) if len(ent) else 0.0 for b in ENTROPY_BOUNDS
        },
        "with_local_answer": int(has_local.sum()),
        "local_agrees": float((local == cloud)[has_local].mean()) if has_local.any() else None,
    }


# -- training targets ----------------------------------------------------------------------------


def read_labels(path: str | Path) -> dict[int, int]:
    """A label file: CSV lines `seq,label` (the record's number in the store, its class)."""
    labels: dict[int, int] = {}
    try:
        rows = list(csv.reader(Path(path).read_text().splitlines()))
    except OSError as exc:
        raise DdnnError(f"--labels {path}: unreadable ({exc.strerror or exc})") from exc
    for n, row in enumerate(rows, 1):
        if not row or row[0].strip().startswith("#") or row[0].strip() == "seq":
            continue
        try:
            seq, label = (int(v) for v in row)
        except ValueError:
            raise DdnnError(f"--labels {path} line {n}: expected `seq,label`, got {row}") from None
        if label < 0:
            raise DdnnError(f"--labels {path} line {n}: a class index is 0 or more, got {label}")
        labels[seq] = label
    return labels


def targets(
    group: Group, max_entropy: float, labels: dict[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, y, source) of the group's records that have a training label: a given one from
    `labels` (seq -> class), else the cloud's answer when its entropy is at most
    `max_entropy`. Records with neither are left out."""
    if not 0.0 <= max_entropy <= 1.0:
        raise DdnnError(f"--max-entropy must be in [0, 1], got {max_entropy}")
    cols = group.columns
    given = np.array([(labels or {}).get(int(s), -1) for s in cols["seq"]], np.int64)
    cloud_ok = (cols["cloud_entropy"] <= max_entropy) & (cols["cloud_pred"] >= 0)
    keep = (given >= 0) | cloud_ok
    y = np.where(given >= 0, given, cols["cloud_pred"].astype(np.int64))
    source = np.where(given >= 0, LABEL_GIVEN, LABEL_CLOUD)
    rows = np.flatnonzero(keep)
    return rows, y[rows], source[rows].astype(np.int8)


def pick_group(coll: Collection, model: str | None = None, version: int | None = None) -> Group:
    """The one group a training set is made of; a store holding several must be narrowed."""
    found = [g for g in coll.groups if (model is None or g.model == model)
             and (version is None or g.version == version)]  # fmt: skip
    if len(found) == 1:
        return found[0]
    held = ", ".join(g.name for g in coll.groups) or "nothing"
    if not found:
        raise DdnnError(f"{coll.folder} holds no records of that model/version; it holds {held}")
    raise DdnnError(f"{coll.folder} holds several kinds of records ({held}): pass --version")


def export_npz(
    coll: Collection,
    out: str | Path,
    *,
    max_entropy: float,
    labels: dict[int, int] | None = None,
    version: int | None = None,
) -> dict[str, int]:
    """Write the training set: raw-input records as `x` uint8 images [N, H, W(, C)] and `y`
    (what `ddnn train --dataset npz` reads), feature records as `features` and `y` (what
    `ddnn train --distill` uses, read from the store directly). Both add `seq`, `source`."""
    group = pick_group(coll, version=version)
    rows, y, source = targets(group, max_entropy, labels)
    if not len(rows):
        raise DdnnError(
            f"no record has a label: raise --max-entropy (now {max_entropy}) or --labels"
        )
    x = group.columns["x"][rows]
    arrays = {"y": y, "seq": group.columns["seq"][rows], "source": source}
    if group.kind == "raw":
        if x.shape[1] != 1:
            raise DdnnError("raw records of several devices are no image set; use --distill")
        images = np.clip(np.rint(x[:, 0].astype(np.float32) * 255), 0, 255).astype(np.uint8)
        arrays["x"] = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    else:
        arrays["features"] = x
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return {"samples": len(rows), "given": int((source == LABEL_GIVEN).sum())}
