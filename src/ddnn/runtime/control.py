"""The server's side of a live rollout: it carries out the operator's deploy and rollback
commands on its `LiveModels`, announces the version devices should move to, answers their fetch
requests with chunked, hashed bundles and unloads versions no device uses any more.

Commands reach every server (a plain subscription: each must load the version); fetches reach
one server of the group (shared). Transport callbacks only enqueue: loading a model reads and
hashes every weight file, which must not hold up the requests behind it on the network thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Self

from ddnn.errors import DdnnError
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.metric_names import DEPLOYS, FETCHES_SERVED, VERSIONS_UNLOADED
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import (
    SERVER_IDENTITY,
    command_filter,
    command_reply_topic,
    fetch_filter,
    fetch_reply_topic,
    last_level,
    version_topic,
)
from ddnn.runtime.replies import publish_quietly
from ddnn.runtime.rollout_wire import (
    DEPLOY,
    ROLLBACK,
    Announcement,
    ChunkHeader,
    Command,
    CommandReply,
    FetchRequest,
    RolloutMessageError,
    chunks,
    decode_message,
    encode_chunk,
    encode_message,
    pack_bundle,
    sha256_of,
)
from ddnn.runtime.transport import Transport
from ddnn.runtime.versions import Change, DeployRefused, LiveModels
from ddnn.store.artifact import SPEC_FILE
from ddnn.store.durable import sha256_hex

log = logging.getLogger(__name__)

_CHUNK_HEADROOM = 512  # bytes of a chunk message kept for its JSON header


class RolloutControl(Service):
    """Serves `db`'s rollouts on `transport`. Built inert: `start()` starts the thread and
    subscribes, `close()` stops it."""

    def __init__(
        self,
        transport: Transport,
        db: LiveModels,
        *,
        metrics: Metrics | None = None,
        group: str | None = None,
        identity: str = SERVER_IDENTITY,
        chunk_bytes: int | None = None,
        check_every_s: float = 1.0,
    ) -> None:
        """`chunk_bytes`: most bundle bytes in one message (default: what the broker's packet
        limit leaves room for)."""
        self.transport = transport
        self.db = db
        self.metrics = metrics or Metrics()
        self.group = group
        self.identity = identity
        limit = transport.max_payload - _CHUNK_HEADROOM
        self.chunk_bytes = min(chunk_bytes or limit, limit)
        self.check_every_s = check_every_s
        self._inbox: queue.Queue[tuple[Callable[[str, bytes], None], str, bytes] | None] = (
            queue.Queue()
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._thread is not None or self._stop.is_set():
            return self
        self._thread = threading.Thread(target=self._loop, name="server-rollout", daemon=True)
        self._thread.start()
        self.transport.subscribe(command_filter(), self._enqueue(self._command))
        self.transport.subscribe(fetch_filter(group=self.group), self._enqueue(self._fetch))
        return self

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=5)

    def _enqueue(self, handle: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        return lambda topic, payload: self._inbox.put((handle, topic, payload))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=self.check_every_s)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    handle, topic, payload = item
                    handle(topic, payload)
                for _ in self.db.unload_idle():
                    self.metrics.inc(*VERSIONS_UNLOADED)
            except Exception:  # one bad command must not end rollouts
                log.exception("rollout control failed on a message")

    # -- commands --------------------------------------------------------------------------

    def _command(self, topic: str, payload: bytes) -> None:
        operator = last_level(topic)
        try:
            command = decode_message(Command, payload)
        except RolloutMessageError as exc:
            log.warning("unreadable command from %s: %s", operator, exc)
            self._answer(operator, CommandReply("", False, f"unreadable command: {exc}"))
            return
        name = command.model
        try:
            change = self._carry_out(command)
        except DeployRefused as exc:
            log.warning("%s: %s", operator, exc)
            self.metrics.inc(*DEPLOYS, result="refused")
            known = tuple(self.db.known_versions(name)) if name else ()
            self._answer(operator, self._reply(command.id, False, str(exc), known))
            return
        if change is not None:
            self.metrics.inc(*DEPLOYS, result="ok")
            self._announce(change)
            name = change.model
            message = change.message
        else:
            message = ", ".join(f"{n} v{v} is current" for n, v in sorted(self.db.current.items()))
        known = tuple(self.db.known_versions(name)) if name else ()
        self._answer(operator, self._reply(command.id, True, message, known))

    def _carry_out(self, command: Command) -> Change | None:
        if command.action == DEPLOY and command.run:
            return self.db.deploy(command.run)
        if command.action == DEPLOY:
            if command.model is None or command.version is None:
                raise DeployRefused("a deploy names a run folder, or a model and a version")
            return self.db.deploy_version(command.model, command.version)
        if command.action == ROLLBACK:
            if command.model is None:
                only = sorted(self.db.current)
                if len(only) != 1:
                    raise DeployRefused(f"name the model to roll back: one of {only}")
                return self.db.rollback(only[0])
            return self.db.rollback(command.model)
        return None  # status

    def _reply(
        self, command_id: str, ok: bool, message: str, known: tuple[int, ...]
    ) -> CommandReply:
        devices = {f"{n}/{d}": v for (n, d), (v, _) in list(self.db.devices.items())}
        return CommandReply(
            command_id, ok, message, self.identity, dict(self.db.current),
            tuple(self.db.served()), known, devices,
        )  # fmt: skip

    def _answer(self, operator: str, reply: CommandReply) -> None:
        publish_quietly(self.transport, command_reply_topic(operator), encode_message(reply))

    def _announce(self, change: Change) -> None:
        """Retained: a device or edge that subscribes later (started or reconnected after the
        deploy) hears the current version at once, not only at the next deploy."""
        stored = change.stored
        spec = (stored.folder / SPEC_FILE).read_bytes()
        note = Announcement(stored.name, stored.version, sha256_of(spec), str(stored.folder))
        message = encode_message(note)
        publish_quietly(self.transport, version_topic(stored.name), message, retain=True)

    # -- fetches ---------------------------------------------------------------------------

    def _fetch(self, topic: str, payload: bytes) -> None:
        requester = last_level(topic)
        request_id = ""
        try:
            request = decode_message(FetchRequest, payload)
            request_id = request.id
            bundle = self._bundle(request)
        except DdnnError as exc:
            log.warning("fetch from %s refused: %s", requester, exc)
            self.metrics.inc(*FETCHES_SERVED, result="refused")
            error = encode_chunk(ChunkHeader(request_id, error=str(exc)))
            publish_quietly(self.transport, fetch_reply_topic(requester), error)
            return
        for chunk in chunks(request.id, bundle, self.chunk_bytes):
            publish_quietly(self.transport, fetch_reply_topic(requester), chunk)
        self.metrics.inc(*FETCHES_SERVED, result="ok")
        log.info(
            "sent %s v%d %s to %s (%d bytes)",
            request.model, request.version, ",".join(request.parts), requester, len(bundle),
        )  # fmt: skip

    def _bundle(self, request: FetchRequest) -> bytes:
        """spec.json and the weight files asked for, each checked against the loaded spec."""
        stored = self.db.stored.get((request.model, request.version))
        if stored is None:
            raise DdnnError(
                f"{request.model} v{request.version} is not loaded on this server; "
                f"it serves {', '.join(self.db.served())}"
            )
        files = {}
        for part in request.parts:
            if part not in stored.parts:
                raise DdnnError(f"{stored.name} has no part {part!r}; parts: {stored.parts}")
            data = stored.weights_path(part).read_bytes()
            if sha256_hex(data) != stored.hashes.get(part):
                raise DdnnError(f"{stored.weights_path(part)} changed since it was loaded")
            files[part] = data
        return pack_bundle((stored.folder / SPEC_FILE).read_bytes(), files)
