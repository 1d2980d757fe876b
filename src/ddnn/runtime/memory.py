"""In-process twin of the MQTT transport, for tests and single-machine runs.

Transports opened with the same hub name see each other's messages. Delivery is asynchronous
through one dispatcher thread per transport, as with a real broker, so a slow handler delays
only its own transport and never a publisher. A hub keeps retained messages while it has
members, as a broker without persistence keeps them while it runs.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from typing import Any, Self

from ddnn.errors import DdnnError
from ddnn.runtime.transport import (
    DEFAULT_MAX_PACKET_SIZE,
    Handler,
    RetainedStore,
    SubscriptionTable,
    Transport,
    check_publish,
    validate_filter,
)

logger = logging.getLogger(__name__)

_Item = tuple[str, bytes, Handler] | None  # None stops the dispatcher


class _Hub:
    """The 'broker' shared by all transports of one name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.table: SubscriptionTable[MemoryTransport] = SubscriptionTable()
        self.members: set[MemoryTransport] = set()
        self.retained = RetainedStore()
        # held by retained publishes and by subscribes, so a new subscription gets a retained
        # message published meanwhile exactly once: from the store or routed
        self.retain_lock = threading.Lock()


_hubs: dict[str, _Hub] = {}
_hubs_lock = threading.Lock()
_serial = itertools.count(1)


def _join_hub(name: str, transport: MemoryTransport) -> _Hub:
    with _hubs_lock:
        hub = _hubs.setdefault(name, _Hub(name))
        hub.members.add(transport)
        return hub


def _leave_hub(hub: _Hub, transport: MemoryTransport) -> None:
    """Forget the transport; the hub itself goes when its last member leaves."""
    hub.table.remove_owner(transport)
    with _hubs_lock:
        hub.members.discard(transport)
        if not hub.members and _hubs.get(hub.name) is hub:
            del _hubs[hub.name]


class MemoryTransport(Transport):
    """A transport on the in-process hub `name` (`memory://<name>`)."""

    def __init__(
        self,
        name: str = "default",
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        close_timeout: float = 5.0,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise DdnnError(f"memory hub name {name!r} must be non-empty and contain no '/'")
        if max_packet_size < 16:
            raise DdnnError(f"max_packet_size={max_packet_size} is too small to carry anything")
        self._max_packet_size = max_packet_size
        self._close_timeout = close_timeout
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._hub = _join_hub(name, self)
        self._thread = threading.Thread(
            target=self._dispatch, name=f"ddnn-memory-{name}-{next(_serial)}", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """`memory://<name>`; an empty name means 'default'."""
        scheme, _, name = url.partition("://")
        if scheme != "memory":
            raise DdnnError(f"{url!r} is not a memory:// URL")
        return cls(name or "default", **kwargs)

    @property
    def max_packet_size(self) -> int:
        return self._max_packet_size

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._check_open()
        check_publish(topic, payload, self._max_packet_size)
        data = bytes(payload)  # the publisher may reuse its buffer, as with a socket
        if not retain:
            self._route(topic, data)
            return
        with self._hub.retain_lock:  # kept (or, empty, cleared), and delivered as usual
            self._hub.retained.keep(topic, data)
            self._route(topic, data)

    def _route(self, topic: str, data: bytes) -> None:
        for owner, handler in self._hub.table.route(topic):
            owner._queue.put((topic, data, handler))

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Also delivers the matching retained messages, as a broker does on SUBSCRIBE."""
        self._check_open()
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        hub = self._hub
        with hub.retain_lock:
            hub.table.add(self, topic_filter, handler)
            for topic, data in hub.retained.matching(topic_filter):
                self._queue.put((topic, data, handler))

    def unsubscribe(self, topic_filter: str) -> None:
        validate_filter(topic_filter)
        if not self._hub.table.remove(self, topic_filter):
            logger.debug("unsubscribe(%r): not subscribed", topic_filter)

    def close(self) -> None:
        """Stop delivery (pending messages are dropped) and join the dispatcher thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        _leave_hub(self._hub, self)
        self._queue.put(None)
        if threading.current_thread() is self._thread:
            return  # closed from a handler: the loop ends after it returns
        self._thread.join(self._close_timeout)
        if self._thread.is_alive():
            logger.warning(
                "%s: a handler is still running after %.1f s; leaving its thread behind",
                self._thread.name,
                self._close_timeout,
            )

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise DdnnError("this transport is closed; create a new one")

    def _dispatch(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._closed.is_set():
                continue
            topic, payload, handler = item
            try:
                handler(topic, payload)
            except Exception:
                logger.exception("handler for %r failed; the message is dropped", topic)

    def __repr__(self) -> str:
        state = "closed" if self._closed.is_set() else "open"
        return f"MemoryTransport({self._hub.name!r}, {state})"
