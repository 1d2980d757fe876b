"""The in-memory transport: asynchronous, MQTT-like delivery inside one process."""

from __future__ import annotations

import threading
import time

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.memory import MemoryTransport


def test_hubs_are_isolated_by_name(hub_name: str, inbox) -> None:
    with MemoryTransport(hub_name) as a, MemoryTransport(hub_name + "-other") as b:
        b.subscribe("#", inbox)
        a.publish("t", b"x")
        inbox.assert_empty()


def test_shared_subscription_is_round_robin(hub_name: str, make_inbox: type) -> None:
    inboxes = [make_inbox() for _ in range(3)]
    transports = [MemoryTransport(hub_name) for _ in range(4)]
    try:
        for transport, inbox in zip(transports, inboxes, strict=False):
            transport.subscribe("$share/workers/dd/q/+/1/+", inbox)
        for i in range(9):
            transports[3].publish("dd/q/m/1/dev0", bytes([i]))
        received = [[p[0] for _, p in inbox.take(3)] for inbox in inboxes]
        assert received == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
        for inbox in inboxes:
            inbox.assert_empty()
    finally:
        for transport in transports:
            transport.close()


def test_messages_from_one_publisher_arrive_in_order(hub_name: str, inbox) -> None:
    with MemoryTransport(hub_name) as pub, MemoryTransport(hub_name) as sub:
        sub.subscribe("n", inbox)
        for i in range(200):
            pub.publish("n", i.to_bytes(2, "little"))
        assert [int.from_bytes(p, "little") for _, p in inbox.take(200)] == list(range(200))


def test_slow_handler_does_not_block_publisher(hub_name: str, inbox) -> None:
    release = threading.Event()

    def slow(topic: str, payload: bytes) -> None:
        release.wait(5)

    with MemoryTransport(hub_name) as pub, MemoryTransport(hub_name) as slow_sub:
        with MemoryTransport(hub_name) as fast_sub:
            slow_sub.subscribe("t", slow)
            fast_sub.subscribe("t", inbox)
            start = time.monotonic()
            for _ in range(20):
                pub.publish("t", b"x")
            assert time.monotonic() - start < 0.5
            assert len(inbox.take(20)) == 20  # the fast subscriber is not held up either
        release.set()


def test_close_joins_the_dispatcher_and_is_idempotent(hub_name: str) -> None:
    t = MemoryTransport(hub_name)
    thread = t._thread
    assert thread.is_alive()
    t.close()
    assert not thread.is_alive()
    t.close()
    with pytest.raises(DdnnError, match="closed"):
        t.publish("t", b"x")
    with pytest.raises(DdnnError, match="closed"):
        t.subscribe("t", lambda topic, payload: None)


def test_close_from_inside_a_handler(hub_name: str) -> None:
    t = MemoryTransport(hub_name)
    closed = threading.Event()

    def close_me(topic: str, payload: bytes) -> None:
        t.close()
        closed.set()

    t.subscribe("t", close_me)
    t.publish("t", b"x")
    assert closed.wait(2)
    t._thread.join(2)
    assert not t._thread.is_alive()


def test_bad_arguments(hub_name: str) -> None:
    with pytest.raises(DdnnError, match="hub name"):
        MemoryTransport("a/b")
    with MemoryTransport(hub_name) as t:
        with pytest.raises(DdnnError, match="wildcards"):
            t.publish("dd/+", b"")
        with pytest.raises(DdnnError, match="'#' must be a whole last level"):
            t.subscribe("a/#/b", lambda topic, payload: None)
        with pytest.raises(TypeError, match="callable"):
            t.subscribe("a", "not a function")  # type: ignore[arg-type]
