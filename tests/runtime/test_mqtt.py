"""MQTT-specific behaviour against a real Mosquitto (shared semantics: test_contract.py)."""

from __future__ import annotations

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
from ddnn.runtime.transport import DEFAULT_MAX_PACKET_SIZE, create_transport

pytestmark = pytest.mark.integration


def test_tcp_nodelay_is_set(broker: MosquittoBroker) -> None:
    with MqttTransport.from_url(broker.url) as t:
        sock = t._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_max_packet_size_comes_from_connack(broker: MosquittoBroker) -> None:
    with create_transport(broker.url) as t:
        assert DEFAULT_MAX_PACKET_SIZE != 65536
        assert t.max_packet_size == 65536


def test_oversize_payload_is_refused_before_paho_sees_it(
    broker: MosquittoBroker, inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    with create_transport(broker.url) as t:
        assert isinstance(t, MqttTransport)
        t.subscribe("big/#", inbox)
        with monkeypatch.context() as patch:
            patch.setattr(t._client, "publish", pytest.fail)  # paho would re-send it forever
            with pytest.raises(DdnnError, match="over the broker limit of 65536 bytes"):
                t.publish("big/x", bytes(70_000))
        t.publish("big/y", b"still connected")
        assert inbox.get() == ("big/y", b"still connected")
        assert t.connected


def test_dead_broker_fails_fast_with_a_hint() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(DdnnError, match="ddnn broker") as info:
        create_transport(url)
    assert url in str(info.value)
    assert time.monotonic() - start < 2


def test_silent_server_times_out_instead_of_hanging() -> None:
    with socket.socket() as server:  # accepts TCP, never speaks MQTT
        server.bind((LOOPBACK, 0))
        server.listen()
        url = f"mqtt://{LOOPBACK}:{server.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(DdnnError, match=r"no CONNACK within 0\.3 s"):
            create_transport(url, connect_timeout=0.3)
        assert time.monotonic() - start < 2


def test_reconnect_and_resubscribe_after_broker_restart(broker: MosquittoBroker, inbox) -> None:
    fast = {"reconnect_delay": (0.05, 0.5)}
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


def test_credentials_are_keywords_not_url() -> None:
    with pytest.raises(DdnnError, match="password was given without a username"):
        MqttTransport(LOOPBACK, free_port(), password="secret")
    with pytest.raises(DdnnError, match="tls="):
        MqttTransport(LOOPBACK, free_port(), tls="yes")  # type: ignore[arg-type]


def test_a_filter_subscribed_while_tagging_starts_still_gets_each_message_once(
    broker: MosquittoBroker,
) -> None:
    """Thread A subscribes 't/a' and is preempted between deciding "untagged" and queueing its
    SUBSCRIBE; meanwhile 't/+' overlaps it and switches tagging on. A's late untagged SUBSCRIBE
    must not replace the tagged one (the '+' handler would then get every message twice)."""
    sub, pub = MqttTransport.from_url(broker.url), MqttTransport.from_url(broker.url)
    got: Counter[str] = Counter()
    real = sub._client.subscribe

    def slow(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "A" and kwargs.get("properties") is None:
            time.sleep(0.3)
        return real(*args, **kwargs)

    sub._client.subscribe = slow  # type: ignore[method-assign]
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
    broker: MosquittoBroker, inbox, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 15: a request for a model no server serves got no answer and no word; the broker's
    PUBACK says 'No matching subscribers' (16), which the transport now counts and names."""
    with create_transport(broker.url) as t, caplog.at_level("WARNING", "ddnn.runtime.mqtt"):
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
