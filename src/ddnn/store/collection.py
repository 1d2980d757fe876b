"""Keeping what a server answered: an opt-in, bounded store of collected requests on disk.

The server hands each answered request to `Collector.offer`, which only puts it on a queue (it
never blocks, never raises): a writer thread groups records into shards and writes each shard
with the store's manifest as one atomic save (`durable.replace_files`, the manifest last, so it
is the commit point). A write that fails is logged and counted; serving goes on.

The store is bounded by records and bytes: a record that would cross either bound is not kept,
the store says so once in the log and in its `stats` (`full` 1, `skipped_full` counting), and
collects nothing more until it is emptied. The bytes are bounded before anything is written,
with a worst-case estimate per record (float32 values) and per shard (header and manifest), so
the folder never grows past `max_bytes`.

Format (see docs/learning.md): `manifest.json` lists the shards with their record count, size
and SHA-256; each shard is a safetensors file of one (model, version, section, kind) holding
`x` [n, *shape] (int8 when every value is +-1, the binary features DDNN sends; else float32),
`present` [n, D], the cloud's `cloud_pred`, `cloud_exit`, `cloud_entropy`, the device's
`local_pred` (-1) and `local_entropy` (NaN) when the frame carried none, `frame_id`, `seq` (the
record's number in the store, what a label file names) and `time` (Unix seconds).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import torch

from ddnn.errors import DdnnError
from ddnn.store.durable import json_bytes, replace_files, safetensors_bytes, sha256_hex

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "ddnn-collection/1"
KINDS = ("features", "raw")  # what `x` holds: a device section's output, or the raw input
SHARD_OVERHEAD = 4096  # bytes reserved per shard: its safetensors header and manifest entry
RECORD_FIELDS = 48  # bytes of a record's fields besides x (present at most a few bytes more)


@dataclass(frozen=True)
class Record:
    """One answered request as the server saw it. x [D, ...] is what the request carried
    (decoded), present [D] the devices it fused (None: all)."""

    model: str
    version: int
    section: int
    kind: str  # one of KINDS
    x: np.ndarray
    present: np.ndarray | None
    cloud_pred: int
    cloud_exit: int
    cloud_entropy: float
    local_pred: int = -1
    local_entropy: float = float("nan")
    frame_id: int = 0
    time: float = field(default_factory=time.time)

    @property
    def group(self) -> tuple[str, int, int, str, tuple[int, ...]]:
        """Records of one group share a shard."""
        return (self.model, self.version, self.section, self.kind, tuple(self.x.shape))

    @property
    def worst_bytes(self) -> int:
        """An upper bound of the record's bytes in a shard (float32 values)."""
        return 4 * int(self.x.size) + 2 * int(self.x.shape[0]) + RECORD_FIELDS


def new_manifest() -> dict[str, Any]:
    return {"format": FORMAT, "next_seq": 0, "shards": []}


def shard_arrays(records: list[Record], first_seq: int) -> dict[str, np.ndarray]:
    """One shard's columns. x is stored as int8 when every value is +-1 (DDNN's binary
    features: 4x smaller than float32, exactly), else as float32."""
    x = np.stack([r.x for r in records]).astype(np.float32)  # [n, D, ...]
    if np.isin(x, (-1.0, 1.0)).all():
        x = x.astype(np.int8)
    present = np.stack(
        [np.ones(r.x.shape[0], bool) if r.present is None else r.present for r in records]
    )  # [n, D]
    return {
        "x": x,
        "present": present.astype(np.uint8),
        "cloud_pred": np.array([r.cloud_pred for r in records], np.int32),
        "cloud_exit": np.array([r.cloud_exit for r in records], np.int32),
        "cloud_entropy": np.array([r.cloud_entropy for r in records], np.float32),
        "local_pred": np.array([r.local_pred for r in records], np.int32),
        "local_entropy": np.array([r.local_entropy for r in records], np.float32),
        "frame_id": np.array([r.frame_id for r in records], np.int64),
        "seq": np.arange(first_seq, first_seq + len(records), dtype=np.int64),
        "time": np.array([r.time for r in records], np.float64),
    }


class Collector:
    """The writer side of a collection store in `folder`. Built inert; `start()` reads the
    manifest (a damaged one is a DdnnError: the server refuses to start rather than overwrite
    it) and starts the writer; `close()` writes what is buffered and stops it."""

    def __init__(
        self,
        folder: str | Path,
        *,
        max_bytes: int,
        max_count: int,
        shard_records: int = 256,
        flush_s: float = 5.0,
        queue_limit: int = 4096,
    ) -> None:
        if max_bytes < 1 or max_count < 1:
            raise DdnnError(
                f"a collection store needs room: max bytes {max_bytes}, count {max_count}"
            )
        self.folder = Path(folder)
        self.max_bytes, self.max_count = max_bytes, max_count
        self.shard_records, self.flush_s = shard_records, flush_s
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_limit)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._manifest = new_manifest()
        self._buffers: dict[tuple[Any, ...], list[Record]] = {}
        self._oldest = 0.0  # monotonic time of the oldest buffered record
        self._bytes = self._count = 0  # on disk (bytes) and kept (count, buffered included)
        self._reserved = 0  # worst-case bytes of the buffered records and their shards
        self.full = False
        self.counts = {"written": 0, "skipped_full": 0, "dropped": 0, "write_failures": 0}
        self._counts_lock = threading.Lock()  # offer() runs on the server's threads

    @property
    def stats(self) -> dict[str, int]:
        """Counters for the server's metrics (`ddnn_collect_<name>_total`); `full` is 0 or 1."""
        with self._counts_lock:
            return {**self.counts, "full": int(self.full)}

    def counts_failed(self, records: int) -> None:
        """Records the caller could not even offer (a bug on its side): counted as dropped."""
        self._bump("dropped", records)

    def _bump(self, name: str, value: int = 1) -> None:
        with self._counts_lock:
            self.counts[name] += value

    def start(self) -> Self:
        if self._thread is not None or self._stop.is_set():
            return self
        from ddnn.store.collected import read_manifest  # the reader checks the manifest

        if (self.folder / MANIFEST).exists():
            self._manifest = read_manifest(self.folder)
        else:
            self._check_new_folder()
        self._count = sum(s["records"] for s in self._manifest["shards"])
        self._bytes = self._disk_bytes()
        if self._count >= self.max_count or self._bytes + SHARD_OVERHEAD > self.max_bytes:
            self._become_full()
        log.info("collecting answered requests into %s (%d kept)", self.folder, self._count)
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()
        return self

    def _check_new_folder(self) -> None:
        """A store starts in a new or empty folder: never among other files (a run folder)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            others = [p.name for p in self.folder.iterdir()]
        except OSError as exc:
            raise DdnnError(
                f"cannot collect into {self.folder}: {exc.strerror or exc}; name a new folder"
            ) from exc
        if others:
            raise DdnnError(
                f"{self.folder} holds files but no {MANIFEST} ({', '.join(sorted(others)[:3])}"
                "...): it is not a collection store; name a new or empty folder"
            )

    def offer(self, record: Record) -> None:
        """Queue a record for the writer; never blocks or raises (the request path calls it)."""
        if self.full:
            self._bump("skipped_full")
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._bump("dropped")

    def close(self) -> None:
        """Write what is queued and buffered, then stop; closing again does nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._accept(self._queue.get(timeout=0.1))
            except queue.Empty:
                if self._stop.is_set():
                    break
            if self._buffers and time.monotonic() - self._oldest >= self.flush_s:
                self._flush_all()
        self._flush_all()

    def _accept(self, record: Record) -> None:
        need = record.worst_bytes + (0 if record.group in self._buffers else SHARD_OVERHEAD)
        if (
            self.full
            or self._count >= self.max_count
            or (self._bytes + self._reserved + need > self.max_bytes)
        ):
            self._become_full()
            self._bump("skipped_full")
            return
        buffer = self._buffers.setdefault(record.group, [])
        if not buffer and len(self._buffers) == 1:
            self._oldest = time.monotonic()
        buffer.append(record)
        self._count += 1
        self._reserved += need
        if len(buffer) >= self.shard_records:
            self._flush(record.group)

    def _become_full(self) -> None:
        if not self.full:
            self.full = True
            log.warning(
                "collection store %s is full (%d records, limits: %d records, %d bytes): "
                "collecting stopped; empty it or give another --collect folder",
                self.folder, self._count, self.max_count, self.max_bytes,
            )  # fmt: skip

    def _flush_all(self) -> None:
        for group in list(self._buffers):
            self._flush(group)

    def _flush(self, group: tuple[Any, ...]) -> None:
        records = self._buffers.pop(group)
        self._oldest = time.monotonic()
        self._reserved -= sum(r.worst_bytes for r in records) + SHARD_OVERHEAD
        try:
            self._write(records)
        except Exception:  # a full disk, a bug: logged and counted, never the server's problem
            log.exception(
                "collection store %s: writing %d records failed", self.folder, len(records)
            )
            self._bump("write_failures")
            self._count -= len(records)

    def _write(self, records: list[Record]) -> None:
        first = records[0]
        seq = int(self._manifest["next_seq"])
        arrays = shard_arrays(records, seq)
        meta = {"model": first.model, "version": str(first.version),
                "section": str(first.section), "kind": first.kind}  # fmt: skip
        data = safetensors_bytes({k: torch.from_numpy(v) for k, v in arrays.items()}, meta)
        name = f"shard-{seq:012d}.safetensors"
        entry = {
            "file": name, "records": len(records), "bytes": len(data), "sha256": sha256_hex(data),
            "model": first.model, "version": first.version, "section": first.section,
            "kind": first.kind, "first_time": records[0].time, "last_time": records[-1].time,
        }  # fmt: skip
        manifest = {**self._manifest, "next_seq": seq + len(records)}
        manifest["shards"] = [*self._manifest["shards"], entry]
        replace_files(self.folder, {name: data, MANIFEST: json_bytes(manifest)})
        self._manifest = manifest
        self._bytes = self._disk_bytes()
        self._bump("written", len(records))

    def _disk_bytes(self) -> int:
        shards = sum(int(s["bytes"]) for s in self._manifest["shards"])
        path = self.folder / MANIFEST
        return shards + (path.stat().st_size if path.exists() else 0)
