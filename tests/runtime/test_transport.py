"""MQTT topic semantics, packet-size arithmetic and the transport registry."""

from __future__ import annotations

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.transport import (
    SubscriptionTable,
    check_publish,
    create_transport,
    filters_overlap,
    max_payload_for,
    publish_packet_size,
    split_shared,
    topic_matches,
    validate_filter,
    validate_topic,
)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),  # '+' matches an empty level
        ("+/+", "/x", True),
        ("a/#", "a", True),  # '#' includes the parent level
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("+/b/#", "x/b", True),
        ("#", "$SYS/x", False),  # wildcards never match $-topics at the first level
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b/", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "bad", ["", "a/#/b", "a/b#", "a+/b", "$share/g", "$share//a", "$share/g+/a"]
)
def test_validate_filter_rejects(bad: str) -> None:
    with pytest.raises(DdnnError):
        validate_filter(bad)


def test_split_shared() -> None:
    assert split_shared("$share/workers/dd/q/+/1/+") == ("workers", "dd/q/+/1/+")
    assert split_shared("dd/a/dev0") == (None, "dd/a/dev0")


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "$SYS/x", "a\x00b", "a/\x83", "a/\uffff"])
def test_validate_topic_rejects(bad: str) -> None:
    with pytest.raises(DdnnError):
        validate_topic(bad)


def test_publish_packet_size_counts_header_topic_id_and_properties() -> None:
    # 1 type byte + 1 length byte + (2 + 9 topic + 2 packet id + 1 properties) + payload
    assert publish_packet_size("dd/a/dev0", 10) == 2 + 14 + 10
    assert publish_packet_size("dd/a/dev0", 200) == 3 + 14 + 200  # length needs 2 bytes now


def test_max_payload_is_the_largest_payload_that_fits() -> None:
    for limit in (140, 141, 142, 16_400, 16_520, 1 << 20):
        for topic_len in (1, 9, 128):
            room = max_payload_for(limit, topic_len)
            assert publish_packet_size("t" * topic_len, room) <= limit
            assert publish_packet_size("t" * topic_len, room + 1) > limit
    assert max_payload_for(20, 128) == 0  # not even an empty payload fits


def test_check_publish_names_the_limit_and_the_fix() -> None:
    check_publish("dd/a/x", bytes(100), 200)
    with pytest.raises(DdnnError, match=r"over the broker limit of 100 bytes .*max_packet_size"):
        check_publish("dd/a/x", bytes(100), 100)
    with pytest.raises(TypeError):
        check_publish("dd/a/x", "text", 100)  # type: ignore[arg-type]


def test_subscription_table_round_robin_and_overlaps() -> None:
    table: SubscriptionTable[str] = SubscriptionTable()
    table.add("w1", "$share/g/q/+", lambda t, p: None)
    table.add("w2", "$share/g/q/+", lambda t, p: None)
    table.add("w3", "$share/g/q/+", lambda t, p: None)
    table.add("mon", "q/#", lambda t, p: None)
    table.add("mon", "q/+", lambda t, p: None)  # overlapping filters: both are delivered
    picks = [sorted(owner for owner, _ in table.route("q/1")) for _ in range(6)]
    workers = [next(o for o in p if o.startswith("w")) for p in picks]
    assert workers == ["w1", "w2", "w3", "w1", "w2", "w3"]
    assert all(p.count("mon") == 2 for p in picks)
    assert table.remove("w2", "$share/g/q/+") and not table.remove("w2", "$share/g/q/+")
    table.remove_owner("mon")
    assert [o for o, _ in table.route("q/1")] in (["w1"], ["w3"])
    assert table.route("other") == []


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("dd/a/dev0", "dd/a/dev1", False),
        ("dd/a/dev0", "dd/a/+", True),
        ("dd/a/+", "dd/q/+", False),
        ("dd/#", "dd/q/m/1/x", True),
        ("dd/a/#", "dd/a", True),  # '#' also matches its parent level
        ("dd/a", "dd/a/b", False),
        ("$share/g/dd/q/m/1/+", "$share/g/dd/q/m/2/+", False),
        ("$share/g/dd/q/m/1/+", "dd/q/#", True),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap and filters_overlap(b, a) is overlap


def test_create_transport_lists_valid_schemes() -> None:
    with pytest.raises(DdnnError, match=r"valid schemes: memory://, mqtt://"):
        create_transport("amqp://localhost")
    with pytest.raises(DdnnError, match="valid schemes"):
        create_transport("localhost:1883")


def test_create_transport_memory(hub_name: str) -> None:
    with create_transport(f"memory://{hub_name}", max_packet_size=1000) as transport:
        assert transport.max_packet_size == 1000
        assert transport.max_payload == max_payload_for(1000)
