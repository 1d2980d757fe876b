"""One behaviour, every transport: the in-memory twin must act like Mosquitto, through each
MQTT client library."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.transport import (
    Transport,
    create_transport,
    max_payload_for,
    mqtt_client_names,
)

LIMIT = 65536  # the broker fixture's max_packet_size

Connect = Callable[[], Transport]


@pytest.fixture(
    params=[
        "memory",
        *(pytest.param(name, marks=pytest.mark.integration) for name in mqtt_client_names()),
    ]
)
def connect(request: pytest.FixtureRequest, hub_name: str) -> Iterator[Connect]:
    """Factory of connected transports on one hub / broker (through each MQTT client
    library); all closed after the test."""
    client = {}
    if request.param == "memory":
        url = f"memory://{hub_name}"
    else:
        url = request.getfixturevalue("broker").url
        client = {"mqtt_client": request.param}
    opened: list[Transport] = []

    def factory() -> Transport:
        opened.append(create_transport(url, max_packet_size=LIMIT, **client))
        return opened[-1]

    yield factory
    for transport in opened:
        transport.close()


def test_round_trip_and_wildcards(connect: Connect, make_inbox: type) -> None:
    pub, sub = connect(), connect()
    exact, plus, hash_, other = make_inbox(), make_inbox(), make_inbox(), make_inbox()
    sub.subscribe("dd/a/dev0", exact)
    sub.subscribe("dd/a/+", plus)
    sub.subscribe("dd/#", hash_)
    sub.subscribe("dd/q/+/1/+", other)
    payload = bytes(range(256)) * 4
    pub.publish("dd/a/dev0", payload)
    for inbox in (exact, plus, hash_):  # overlapping filters: each handler exactly once
        assert inbox.get() == ("dd/a/dev0", payload)
        inbox.assert_empty(0.05)
    other.assert_empty(0.05)


def test_shared_subscription_gives_each_message_to_one_worker(
    connect: Connect, make_inbox: type
) -> None:
    workers = [make_inbox() for _ in range(3)]
    for inbox in workers:
        connect().subscribe("$share/workers/dd/q/+/1/+", inbox)
    monitor = make_inbox()
    connect().subscribe("dd/q/#", monitor)
    pub = connect()
    for i in range(30):
        pub.publish(f"dd/q/m/1/dev{i % 2}", bytes([i]))
    assert sorted(p[0] for _, p in monitor.take(30)) == list(range(30))
    deadline = time.monotonic() + 5
    while sum(w.messages.qsize() for w in workers) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    shares = [[p[0] for _, p in inbox.take(inbox.messages.qsize())] for inbox in workers]
    assert all(shares), "every worker gets a share"
    assert sorted(p for share in shares for p in share) == list(range(30))


def test_size_limit_is_exact_and_checked_before_sending(connect: Connect, inbox) -> None:
    pub, sub = connect(), connect()
    assert pub.max_packet_size == LIMIT
    assert pub.max_payload == max_payload_for(LIMIT)
    sub.subscribe("dd/a/+", inbox)
    room = max_payload_for(LIMIT, len("dd/a/dev0"))
    with pytest.raises(DdnnError, match=f"over the broker limit of {LIMIT} bytes"):
        pub.publish("dd/a/dev0", bytes(room + 1))
    pub.publish("dd/a/dev0", bytes(room))
    assert inbox.get() == ("dd/a/dev0", bytes(room))
    inbox.assert_empty(0.05)


def test_handler_errors_are_logged_and_delivery_goes_on(
    connect: Connect, inbox, caplog: pytest.LogCaptureFixture
) -> None:
    def fragile(topic: str, payload: bytes) -> None:
        if payload == b"bad":
            raise RuntimeError("boom")
        inbox(topic, payload)

    t = connect()
    with caplog.at_level(logging.ERROR):
        t.subscribe("t", fragile)
        t.publish("t", b"bad")
        t.publish("t", b"good")
        assert inbox.get() == ("t", b"good")
    assert "boom" in caplog.text and "handler for 't' failed" in caplog.text


def test_resubscribe_replaces_and_unsubscribe_stops(connect: Connect, make_inbox: type) -> None:
    first, second = make_inbox(), make_inbox()
    t = connect()
    t.subscribe("t", first)
    t.publish("t", b"0")
    assert first.get() == ("t", b"0")  # a delivery to `first` came first: no stale routing
    t.subscribe("t", second)
    t.publish("t", b"1")
    assert second.get() == ("t", b"1")
    first.assert_empty()
    t.unsubscribe("t")
    t.unsubscribe("never/subscribed")
    t.publish("t", b"2")
    first.assert_empty()
    second.assert_empty()


def test_closed_transport_refuses_work(connect: Connect) -> None:
    t = connect()
    t.close()
    t.close()
    with pytest.raises(DdnnError, match="closed"):
        t.publish("t", b"x")


def test_a_retained_message_reaches_later_subscriptions_until_cleared(
    connect: Connect, make_inbox: type
) -> None:
    pub, early = connect(), make_inbox()
    connect().subscribe("dd/c/v/+", early)
    pub.publish("dd/c/v/m", b"v1", retain=True)
    pub.publish("dd/c/v/m", b"v2", retain=True)  # replaces v1
    pub.publish("dd/c/v/n", b"n1", retain=True)
    pub.publish("dd/c/v/m", b"plain")  # not retained: leaves v2 kept
    sent = [("dd/c/v/m", b"v1"), ("dd/c/v/m", b"v2"), ("dd/c/v/n", b"n1"), ("dd/c/v/m", b"plain")]
    assert early.take(4) == sent  # current subscribers get each one as usual (and it is stored)
    # a later subscription gets the last retained message of each topic it matches, wildcards
    # too (one transport per filter: no filters overlap)
    exact, wild, other = make_inbox(), make_inbox(), make_inbox()
    for topic_filter, inbox in [("dd/c/v/m", exact), ("dd/c/#", wild), ("dd/x/#", other)]:
        connect().subscribe(topic_filter, inbox)
    assert exact.get() == ("dd/c/v/m", b"v2")
    assert sorted(wild.take(2)) == [("dd/c/v/m", b"v2"), ("dd/c/v/n", b"n1")]
    for inbox in (exact, wild, other):
        inbox.assert_empty(0.1)
    # an empty retained payload is delivered as usual and clears the topic's message
    pub.publish("dd/c/v/m", b"", retain=True)
    assert early.get() == ("dd/c/v/m", b"")
    cleared = make_inbox()
    connect().subscribe("dd/c/v/+", cleared)
    assert cleared.get() == ("dd/c/v/n", b"n1")
    cleared.assert_empty(0.1)
