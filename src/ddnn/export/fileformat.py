"""The harness's binary files, read and written from Python (the C side is in harness.py).

Input file, little-endian:   "DDNNIN01" | uint32 count | uint32 values per sample
                             | count x values float32 (each sample C-order [C, H, W], in [0, 1])
Output file, little-endian:  "DDNNOUT1" | uint32 count | uint32 logits L | uint32 feature bytes F
                             | uint32 flags (bit 0: features are packed bits)
                             | count x record: int32 decision (dataset class, or -1: offload)
                               | int32 argmax | float32 entropy | L x float32 logits | F x uint8
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddnn.errors import DdnnError

INPUT_MAGIC = b"DDNNIN01"
OUTPUT_MAGIC = b"DDNNOUT1"
INPUT_HEADER = 16
OUTPUT_HEADER = 24


@dataclass
class DeviceResults:
    """Per-sample results of a device section, from any engine or the harness."""

    decision: np.ndarray  # [N] int32: dataset class answered locally, or -1 (offload)
    argmax: np.ndarray  # [N] int32
    entropy: np.ndarray  # [N] float32
    logits: np.ndarray  # [N, L] float32
    features: np.ndarray  # [N, F] uint8: packed bits, or the float32 values' bytes
    binary: bool


def write_inputs(path: str | Path, views: np.ndarray) -> Path:
    """views [N, C, H, W] (or [N, values]) float in [0, 1] -> an input file for the harness."""
    x = np.ascontiguousarray(views, dtype="<f4").reshape(len(views), -1)
    header = INPUT_MAGIC + np.array([len(x), x.shape[1]], dtype="<u4").tobytes()
    path = Path(path)
    path.write_bytes(header + x.tobytes())
    return path


def read_inputs(path: str | Path) -> np.ndarray:
    """An input file -> [N, values] float32; a DdnnError names what is malformed."""
    data = Path(path).read_bytes()
    if len(data) < INPUT_HEADER or data[:8] != INPUT_MAGIC:
        raise DdnnError(f"{path}: not a ddnn input file (expected magic {INPUT_MAGIC.decode()})")
    count, values = np.frombuffer(data[8:16], dtype="<u4")
    if len(data) != INPUT_HEADER + 4 * int(count) * int(values):
        raise DdnnError(f"{path}: {len(data)} bytes do not hold {count} x {values} float32")
    return np.frombuffer(data[16:], dtype="<f4").reshape(int(count), int(values)).copy()


def write_outputs(path: str | Path, res: DeviceResults) -> Path:
    """Results -> an output file in the harness's format (the golden expected results)."""
    n, n_logits = res.logits.shape
    n_bytes = res.features.shape[1]
    header = OUTPUT_MAGIC + np.array([n, n_logits, n_bytes, int(res.binary)], "<u4").tobytes()
    record = _record_dtype(n_logits, n_bytes)
    rows = np.zeros(n, dtype=record)
    rows["decision"], rows["argmax"], rows["entropy"] = res.decision, res.argmax, res.entropy
    rows["logits"], rows["features"] = res.logits, res.features
    path = Path(path)
    path.write_bytes(header + rows.tobytes())
    return path


def read_outputs(path: str | Path) -> DeviceResults:
    """An output file of the harness -> DeviceResults."""
    data = Path(path).read_bytes()
    if len(data) < OUTPUT_HEADER or data[:8] != OUTPUT_MAGIC:
        raise DdnnError(f"{path}: not a ddnn output file (expected magic {OUTPUT_MAGIC.decode()})")
    n, n_logits, n_bytes, flags = (int(v) for v in np.frombuffer(data[8:24], dtype="<u4"))
    record = _record_dtype(n_logits, n_bytes)
    if len(data) != OUTPUT_HEADER + n * record.itemsize:
        raise DdnnError(f"{path}: truncated: {len(data)} bytes for {n} records")
    rows = np.frombuffer(data[OUTPUT_HEADER:], dtype=record)
    return DeviceResults(
        rows["decision"].astype(np.int32),
        rows["argmax"].astype(np.int32),
        rows["entropy"].astype(np.float32),
        rows["logits"].astype(np.float32).reshape(n, n_logits),
        rows["features"].astype(np.uint8).reshape(n, n_bytes),
        bool(flags & 1),
    )


def _record_dtype(n_logits: int, n_bytes: int) -> np.dtype:
    return np.dtype(
        [
            ("decision", "<i4"),
            ("argmax", "<i4"),
            ("entropy", "<f4"),
            ("logits", "<f4", (n_logits,)),
            ("features", "u1", (n_bytes,)),
        ]
    )
