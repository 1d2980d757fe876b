"""A tier following live rollouts: it hears a server announce a new version, fetches that
version's files (over MQTT from a server, or from the announced folder on a shared disk),
checks every hash, prepares what it will run, and hands it over at a frame boundary.

The caller asks `take(frame_id)` before each frame and switches only when handed a version, so
no sample is ever computed half with one version and half with another. Devices of a
multi-device model (`coordinated`) switch only from the frame the edge announced, so every
device's report for a frame names the same version. A fetch that fails leaves the tier on its
old version: the reason is logged, counted (`fetch_failures_total`) and returned by `take` once,
for the next record.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ddnn.errors import DdnnError
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.metric_names import FETCH_FAILURES, SWITCHES
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import (
    FOLLOW_MODES,
    FOLLOW_PATH,
    fetch_reply_topic,
    fetch_topic,
    switch_topic,
    version_topic,
)
from ddnn.runtime.rollout_wire import (
    Announcement,
    ChunkHeader,
    FetchRequest,
    RolloutMessageError,
    Switch,
    decode_chunk,
    decode_message,
    encode_message,
    sha256_of,
    unpack_bundle,
)
from ddnn.runtime.transport import Transport
from ddnn.store.artifact import SPEC_FILE, open_model
from ddnn.store.durable import replace_files

log = logging.getLogger(__name__)

DEFAULT_FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Prepared:
    """A version ready to switch to: its local folder and what `prepare` built from it."""

    version: int
    folder: Path
    payload: Any


@dataclass
class _Fetch:
    id: str
    parts: dict[int, bytes] = field(default_factory=dict)
    header: ChunkHeader | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Follower(Service):
    """Follows the rollouts of `model` for one tier. `prepare(folder)` builds what the tier runs
    from a fetched folder (it may raise DdnnError: the version is then refused); `discard`
    releases a prepared payload that was never switched to."""

    def __init__(
        self,
        transport: Transport,
        *,
        model: str,
        version: int,
        identity: str,
        parts: tuple[str, ...],
        folder: str | Path,
        prepare: Callable[[Path], Any],
        discard: Callable[[Any], None] = lambda _: None,
        mode: str = "mqtt",
        coordinated: bool = False,
        timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        metrics: Metrics | None = None,
    ) -> None:
        if mode not in FOLLOW_MODES:
            raise DdnnError(f"unknown follow mode {mode!r}; valid: {', '.join(FOLLOW_MODES)}")
        self.transport = transport
        self.model, self.version, self.identity = model, version, identity
        self.parts, self.folder, self.mode = parts, Path(folder), mode
        self.prepare, self.discard = prepare, discard
        self.coordinated, self.timeout_s = coordinated, timeout_s
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a fetch ended: ready or failed
        self._ready: Prepared | None = None
        self._switch_at: dict[int, int] = {}  # version -> first frame (coordinated)
        self._given_up: set[int] = set()  # versions whose fetch failed or was waited out
        self._note = ""
        self._fetch: _Fetch | None = None
        self._inbox: queue.Queue[Announcement | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> Self:
        if self._thread is not None or self._stop.is_set():
            return self
        self._thread = threading.Thread(target=self._loop, name="rollout", daemon=True)
        self._thread.start()
        if self.mode != FOLLOW_PATH:
            self.transport.subscribe(fetch_reply_topic(self.identity), self._on_chunk)
        if self.coordinated:
            self.transport.subscribe(switch_topic(self.model), self._on_switch)
        self.transport.subscribe(version_topic(self.model), self._on_announcement)
        return self

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            self._changed.notify_all()  # a frame waiting for a due fetch stops waiting
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=self.timeout_s + 5)
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self.discard(ready.payload)

    # -- the caller's frame boundary -------------------------------------------------------

    def take(self, frame_id: int) -> tuple[Prepared | None, str]:
        """(the version to switch to before `frame_id`, or None; a note for this frame's
        record: why a fetch failed)."""
        with self._lock:
            self._await_due(frame_id)
            note, self._note = self._note, ""
            ready = self._ready
            if ready is None:
                return None, note
            if self.coordinated and frame_id < self._switch_at.get(ready.version, 1 << 64):
                return None, note
            self._ready = None
            previous, self.version = self.version, ready.version
        self.metrics.inc(*SWITCHES)
        log.info("%s: v%d -> v%d from frame %d", self.identity, previous, ready.version, frame_id)
        return ready, note

    def _await_due(self, frame_id: int) -> None:
        """Coordinated: the edge has named a frame from which a version this device is still
        fetching is due. Wait for the fetch (at most the fetch timeout, once per version)
        rather than report this frame with the old version, which the edge would refuse.
        Called with the lock held."""
        due = [v for v, first in self._switch_at.items()
               if v > self.version and first <= frame_id and v not in self._given_up]  # fmt: skip
        if not self.coordinated or not due:
            return
        version = max(due)

        def settled() -> bool:
            ready = self._ready is not None and self._ready.version == version
            return ready or version in self._given_up or self._stop.is_set()

        if not self._changed.wait_for(settled, timeout=self.timeout_s):
            self._given_up.add(version)
            self._note = f"kept v{self.version}: v{version} was due from frame {frame_id} but "
            self._note += f"not fetched within {self.timeout_s:g} s"

    def wants(self) -> int | None:
        """The version prepared and waiting for its frame, if any."""
        with self._lock:
            return None if self._ready is None else self._ready.version

    # -- transport thread: only record or enqueue ------------------------------------------

    def _on_announcement(self, topic: str, payload: bytes) -> None:
        try:
            self._inbox.put(decode_message(Announcement, payload))
        except RolloutMessageError as exc:
            log.warning("%s: unreadable announcement on %s: %s", self.identity, topic, exc)

    def _on_switch(self, topic: str, payload: bytes) -> None:
        try:
            switch = decode_message(Switch, payload)
        except RolloutMessageError as exc:
            log.warning("%s: unreadable switch on %s: %s", self.identity, topic, exc)
            return
        with self._lock:
            self._switch_at[switch.version] = switch.frame_id

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        try:
            header, data = decode_chunk(payload)
        except RolloutMessageError as exc:
            log.warning("%s: unreadable fetch chunk: %s", self.identity, exc)
            return
        with self._lock:
            fetch = self._fetch
            if fetch is None or header.id != fetch.id:
                return  # an old fetch's chunks
            fetch.header = header
            if not header.error:
                fetch.parts[header.index] = data
            if header.error or len(fetch.parts) >= header.count:
                fetch.done.set()

    # -- the follower's thread -------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            note = self._inbox.get()
            if note is None:
                return
            if note.model != self.model or note.version in (self.version, self.wants()):
                continue
            try:
                prepared = self._get(note)
            except DdnnError as exc:
                self._failed(note, str(exc))
                continue
            except Exception as exc:  # a bug must not end following: say it and stay put
                log.exception("%s: following v%d failed", self.identity, note.version)
                self._failed(note, f"internal error: {exc}")
                continue
            with self._lock:
                old, self._ready = self._ready, prepared
                self._changed.notify_all()
            if old is not None:
                self.discard(old.payload)

    def _failed(self, note: Announcement, why: str) -> None:
        message = f"kept v{self.version}: could not get {note.model} v{note.version}: {why}"
        log.warning("%s: %s", self.identity, message)
        self.metrics.inc(*FETCH_FAILURES)
        with self._lock:
            self._note = message
            self._given_up.add(note.version)
            self._changed.notify_all()

    def _get(self, note: Announcement) -> Prepared:
        """Fetch, check, write locally and prepare version `note.version`."""
        spec, files = self._read_path(note) if self.mode == FOLLOW_PATH else self._read_mqtt(note)
        if sha256_of(spec) != note.spec_sha256:
            raise DdnnError(f"{SPEC_FILE} does not match the hash the server announced")
        try:
            hashes = json.loads(spec)["weights"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DdnnError(f"{SPEC_FILE} is damaged: {exc}") from None
        for part in self.parts:
            if part not in files or sha256_of(files[part]) != hashes.get(part):
                raise DdnnError(f"{part}'s weights do not match the hash in {SPEC_FILE}")
        folder = self.folder / f"v{note.version}"
        written = {f"weights/{p}.safetensors": files[p] for p in self.parts}
        replace_files(folder, {**written, SPEC_FILE: spec})  # spec last: it commits the set
        stored = open_model(folder)
        if (stored.name, stored.version) != (note.model, note.version):
            raise DdnnError(f"got {stored.name} v{stored.version} for {note.model} v{note.version}")
        return Prepared(note.version, folder, self.prepare(folder))

    def _read_path(self, note: Announcement) -> tuple[bytes, dict[str, bytes]]:
        run = Path(note.run)
        try:
            spec = (run / SPEC_FILE).read_bytes()
            files = {p: (run / "weights" / f"{p}.safetensors").read_bytes() for p in self.parts}
        except OSError as exc:
            raise DdnnError(f"cannot read the announced folder {run}: {exc}") from None
        return spec, files

    def _read_mqtt(self, note: Announcement) -> tuple[bytes, dict[str, bytes]]:
        fetch = _Fetch(secrets.token_hex(8))
        with self._lock:
            self._fetch = fetch
        request = FetchRequest(fetch.id, note.model, note.version, self.parts)
        try:
            self.transport.publish(fetch_topic(note.model, self.identity), encode_message(request))
            if not fetch.done.wait(self.timeout_s):
                total = fetch.header.count if fetch.header else "?"
                raise DdnnError(
                    f"no complete answer from a server within {self.timeout_s:.0f} s "
                    f"({len(fetch.parts)} of {total} chunks)"
                )
        finally:
            with self._lock:
                self._fetch = None
        header = fetch.header
        assert header is not None
        if header.error:
            raise DdnnError(f"the server refused: {header.error}")
        if any(i not in fetch.parts for i in range(header.count)):
            raise DdnnError("the fetch's chunks do not add up: damaged in transfer")
        bundle = b"".join(fetch.parts[i] for i in range(header.count))
        if len(bundle) != header.size or sha256_of(bundle) != header.sha256:
            raise DdnnError("the fetched bundle does not match its hash: damaged in transfer")
        return unpack_bundle(bundle)
