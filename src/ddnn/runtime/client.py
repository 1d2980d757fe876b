"""Request/reply over a transport: ids, pending requests, deadlines. Shared by devices and the
edge, the two tiers that ask someone upstream and must never wait forever."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from typing import Self

from ddnn.errors import DdnnError
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.protocol import reply_topic
from ddnn.runtime.transport import Transport, publish_packet_size
from ddnn.runtime.wire import ErrorFrame, Reply, Request, decode_frame, encode_frame

log = logging.getLogger(__name__)


@dataclass
class Pending:
    sent_at: float
    done: threading.Event = field(default_factory=threading.Event)
    answer: Reply | ErrorFrame | None = None
    received_at: float = 0.0


@dataclass(frozen=True)
class Sent:
    """What one request cost on the wire."""

    frame_bytes: int  # the ddnn frame
    packet_bytes: int  # the MQTT PUBLISH packet carrying it (fixed header, topic, properties)


class Requester(Service):
    """Publishes requests and matches replies by request id on `reply_topic(identity)`, to
    which `start()` subscribes."""

    def __init__(self, transport: Transport, identity: str) -> None:
        self.transport = transport
        self.identity = identity
        self._ids = count(secrets.randbits(40) + 1)  # random start: ids stay unique over restarts
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self.dropped_replies = 0  # late (past the deadline) or duplicate replies, never used
        self._subscribed = False

    def start(self) -> Self:
        if not self._subscribed:
            self.transport.subscribe(reply_topic(self.identity), self._on_reply)
            self._subscribed = True
        return self

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, topic: str, request: Request) -> tuple[Pending, Sent]:
        """Publish; the returned Pending is completed by the reply (see `wait`)."""
        payload = encode_frame(request)
        sent = Sent(len(payload), publish_packet_size(topic, len(payload)))
        pending = Pending(time.perf_counter())
        with self._lock:
            self._pending[request.request_id] = pending
        try:  # the last thing before the caller waits: paho's thread sends once it has the GIL
            self.transport.publish(topic, payload)
        except DdnnError:
            with self._lock:
                self._pending.pop(request.request_id, None)
            raise
        return pending, sent

    def wait(
        self, request_id: int, pending: Pending, timeout_s: float
    ) -> Reply | ErrorFrame | None:
        """The answer, or None when the deadline passed (a late reply is then dropped)."""
        pending.done.wait(max(timeout_s, 0.0))
        with self._lock:
            self._pending.pop(request_id, None)
        return pending.answer

    def _on_reply(self, topic: str, payload: bytes) -> None:
        try:
            frame = decode_frame(payload)
        except DdnnError as exc:
            log.warning("%s: malformed reply on %s: %s", self.identity, topic, exc)
            return
        if not isinstance(frame, Reply | ErrorFrame) or frame.request_id is None:
            if isinstance(frame, ErrorFrame):
                log.warning("%s: error without request id: %s", self.identity, frame.message)
            return
        with self._lock:
            pending = self._pending.get(frame.request_id)
            # The first answer wins: a second one (a re-delivered request answered again, e.g.
            # by another server) must not replace the answer the caller may already be using.
            if pending is None or pending.done.is_set():
                self.dropped_replies += 1
                pending = None
            else:
                pending.answer, pending.received_at = frame, time.perf_counter()
                pending.done.set()
        if pending is None:
            log.debug("%s: late or duplicate reply to %d dropped", self.identity, frame.request_id)

    def close(self) -> None:
        if self._subscribed:
            self._subscribed = False
            self.transport.unsubscribe(reply_topic(self.identity))
