"""Saving a set of files as one step, and the byte-level checks that go with it.

Every file of a save is written aside (a hidden `.saving-*` folder inside the target folder),
flushed to disk, and only then renamed into place in the order given. A write that fails (a full
disk) therefore leaves the previous version whole: renames need no space. Callers name last the
file that holds the others' hashes (spec.json, train_state.json), so it is the commit point; a
crash between two renames (power loss) leaves a set the hash check refuses rather than a silent
mix. Weight bytes are canonical: the same tensors always give the same file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save

from ddnn.errors import DdnnError

STAGING_PREFIX = ".saving-"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class SaveError(DdnnError):
    """Writing a save failed; the previous version of the folder is intact."""

    def __init__(self, folder: Path, exc: OSError) -> None:
        self.folder = folder
        self.disk_full = exc.errno in _DISK_FULL
        reason = "no space left on device" if self.disk_full else (exc.strerror or str(exc))
        super().__init__(f"{reason.lower()} while saving {folder}")


def write_file(path: Path, data: bytes) -> None:
    """Write `data` and flush it to disk: the one write every save goes through."""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` ({path relative to folder: bytes}) into `folder` as one save: all or none
    replaced by a failed write; renamed in the mapping's order, so name the commit point last.
    Raises SaveError for any OS error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
        try:
            staged = []
            for i, (name, data) in enumerate(files.items()):
                write_file(staging / str(i), data)
                staged.append((staging / str(i), folder / name))
            for _, target in staged:
                target.parent.mkdir(parents=True, exist_ok=True)
            for tmp, target in staged:
                os.replace(tmp, target)
            for parent in dict.fromkeys(target.parent for _, target in staged):
                _fsync_dir(parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise SaveError(folder, exc) from exc


def json_bytes(doc: object) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """safetensors' serialization with a canonical header (metadata keys sorted, tensors in data
    order): the library keeps metadata in a hash map whose order changes from process to process,
    so two identical trainings wrote weight files with different hashes."""
    raw = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    meta = header.pop("__metadata__", None)
    canonical = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
    canonical |= dict(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"], kv[0])))
    text = json.dumps(canonical, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data on 8 bytes
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or an infinity, else None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
