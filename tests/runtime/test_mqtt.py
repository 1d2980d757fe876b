"""MQTT-specific behaviour against a real Mosquitto (shared semantics: test_contract.py)."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.broker import LOOPBACK, MosquittoBroker, free_port
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.mqttbase import BrokerTransport
from ddnn.runtime.transport import DEFAULT_MAX_PACKET_SIZE, Transport, create_transport

pytestmark = pytest.mark.integration


def _socket(t: Transport) -> socket.socket:
    """The transport's connection, whichever library holds it."""
    if isinstance(t, MqttTransport):
        sock = t._client.socket()
        assert isinstance(sock, socket.socket)
        return sock
    from ddnn.runtime import libmosq

    fd = libmosq.lib().mosquitto_socket(t._mosq)  # type: ignore[attr-defined]
    return socket.socket(fileno=os.dup(fd))


def test_tcp_nodelay_is_set(broker: MosquittoBroker, mqtt_client: str) -> None:
    with create_transport(broker.url, mqtt_client=mqtt_client) as t:
        sock = _socket(t)
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            if not isinstance(t, MqttTransport):
                sock.close()  # our duplicate of libmosquitto's descriptor


def test_max_packet_size_comes_from_connack(broker: MosquittoBroker, mqtt_client: str) -> None:
    with create_transport(broker.url, mqtt_client=mqtt_client) as t:
        assert DEFAULT_MAX_PACKET_SIZE != 65536
        assert t.max_packet_size == 65536


def test_oversize_payload_is_refused_before_the_client_library_sees_it(
    broker: MosquittoBroker, inbox, monkeypatch: pytest.MonkeyPatch, mqtt_client: str
) -> None:
    with create_transport(broker.url, mqtt_client=mqtt_client) as t:
        assert isinstance(t, BrokerTransport)
        t.subscribe("big/#", inbox)
        with monkeypatch.context() as patch:
            patch.setattr(t, "_send_publish", pytest.fail)  # paho would re-send it forever
            with pytest.raises(DdnnError, match="over the broker limit of 65536 bytes"):
                t.publish("big/x", bytes(70_000))
        t.publish("big/y", b"still connected")
        assert inbox.get() == ("big/y", b"still connected")
        assert t.connected


def test_dead_broker_fails_fast_with_a_hint(mqtt_client: str) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(DdnnError, match="ddnn broker") as info:
        create_transport(url, mqtt_client=mqtt_client)
    assert url in str(info.value)
    assert time.monotonic() - start < 2


def test_silent_server_times_out_instead_of_hanging(mqtt_client: str) -> None:
    with socket.socket() as server:  # accepts TCP, never speaks MQTT
        server.bind((LOOPBACK, 0))
        server.listen()
        url = f"mqtt://{LOOPBACK}:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(DdnnError, match=r"no CONNACK within 0\.3 s"):
            create_transport(url, mqtt_client=mqtt_client, connect_timeout=0.3)
        assert time.monotonic() - start < 2


def test_reconnect_and_resubscribe_after_broker_restart(
    broker: MosquittoBroker, inbox, mqtt_client: str
) -> None:
    fast = {"reconnect_delay": (0.05, 0.5), "mqtt_client": mqtt_client}
    with create_transport(broker.url, **fast) as pub, create_transport(broker.url, **fast) as sub:
        sub.subscribe("dd/a/+", inbox)
        pub.publish("dd/a/dev0", b"before")
        assert inbox.get() == ("dd/a/dev0", b"before")
        broker.restart()  # new process, no persistence: every subscription is gone
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "no delivery after the broker restart"
            if pub.connected:
                pub.publish("dd/a/dev0", b"after")
            try:
                topic, payload = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            assert (topic, payload) == ("dd/a/dev0", b"after")
            break
        assert sub.connected and pub.connected


def test_credentials_are_keywords_not_url(mqtt_client: str) -> None:
    port = free_port()
    with pytest.raises(DdnnError, match="password was given without a username"):
        create_transport(f"mqtt://{LOOPBACK}:{port}", mqtt_client=mqtt_client, password="secret")
    with pytest.raises(DdnnError, match="tls="):
        create_transport(f"mqtts://{LOOPBACK}:{port}", mqtt_client=mqtt_client, tls="yes")


def test_a_filter_subscribed_while_tagging_starts_still_gets_each_message_once(
    broker: MosquittoBroker, mqtt_client: str
) -> None:
    """Thread A subscribes 't/a' and is preempted between deciding "untagged" and queueing its
    SUBSCRIBE; meanwhile 't/+' overlaps it and switches tagging on. A's late untagged SUBSCRIBE
    must not replace the tagged one (the '+' handler would then get every message twice)."""
    sub, pub = (create_transport(broker.url, mqtt_client=mqtt_client) for _ in range(2))
    assert isinstance(sub, BrokerTransport)
    got: Counter[str] = Counter()
    real = sub._subscribe_packet

    def slow(topic_filter: str, sid: int | None) -> Any:
        if threading.current_thread().name == "A" and sid is None:
            time.sleep(0.3)
        return real(topic_filter, sid)

    sub._subscribe_packet = slow  # type: ignore[method-assign]
    try:
        a = threading.Thread(
            name="A", target=sub.subscribe, args=("t/a", lambda t, p: got.update("a"))
        )
        a.start()
        time.sleep(0.1)
        sub.subscribe("t/+", lambda t, p: got.update("+"))
        a.join()
        for i in range(5):
            pub.publish("t/a", bytes([i]))
        deadline = time.monotonic() + 5
        while sum(got.values()) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # a duplicate would arrive right behind
        assert got == {"a": 5, "+": 5}
    finally:
        sub.close()
        pub.close()


def test_a_request_nobody_subscribes_to_is_counted_and_named_once(
    broker: MosquittoBroker, inbox, caplog: pytest.LogCaptureFixture, mqtt_client: str
) -> None:
    """issue 15: a request for a model no server serves got no answer and no word; the broker's
    PUBACK says 'No matching subscribers' (16), which the transport now counts and names."""
    with (
        create_transport(broker.url, mqtt_client=mqtt_client) as t,
        caplog.at_level("WARNING", "ddnn.runtime"),
    ):
        for _ in range(3):
            t.publish("dd/q/nosuchmodel/1/dev0", b"x")
        t.subscribe("dd/q/served/+/+", inbox)
        t.publish("dd/q/served/1/dev0", b"y")
        assert inbox.get() == ("dd/q/served/1/dev0", b"y")
        deadline = time.monotonic() + 5
        while t.stats["publishes_unrouted"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert t.stats["publishes_unrouted"] == 3 and t.stats["publishes_refused"] == 0
    warned = [r.getMessage() for r in caplog.records if "no subscriber" in r.getMessage()]
    assert len(warned) == 1 and "dd/q/nosuchmodel/1/dev0" in warned[0]


def test_a_missing_libmosquitto_is_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ctypes

    from ddnn.runtime import libmosq

    def absent(*args: Any, **kwargs: Any) -> Any:
        raise OSError("libmosquitto.so.1: cannot open shared object file")

    monkeypatch.setattr(libmosq, "_lib", None)
    monkeypatch.setattr(ctypes, "CDLL", absent)
    with pytest.raises(DdnnError, match="install the Debian package libmosquitto1") as info:
        create_transport(f"mqtt://{LOOPBACK}:{free_port()}", mqtt_client="libmosquitto")
    assert "\n" not in str(info.value)


def test_an_unknown_mqtt_client_lists_the_valid_ones() -> None:
    with pytest.raises(DdnnError, match="valid: paho, libmosquitto"):
        create_transport(f"mqtt://{LOOPBACK}:{free_port()}", mqtt_client="pahoo")


def test_acknowledged_publishes_never_count_as_a_backlog(
    broker: MosquittoBroker, make_inbox, mqtt_client: str
) -> None:
    """A PUBACK can beat the publish call's return; such a message must not stay counted as
    waiting (libmosquitto's count leaked so, and a loaded server refused every reply)."""
    inbox = make_inbox()
    kwargs = {"mqtt_client": mqtt_client, "max_queued_messages": 40}
    with create_transport(broker.url, **kwargs) as pub, create_transport(broker.url) as sub:
        sub.subscribe("many/+", inbox)
        for batch in range(150):
            for i in range(10):
                pub.publish(f"many/{i}", bytes([batch % 256]))
            inbox.take(10, timeout=5.0)
