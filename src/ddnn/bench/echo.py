"""Bare MQTT echoes, one per client library: the round trip a library gives with no ddnn code.

Each echo is two clients of that library on one broker: the echo answers inside its network
thread's message callback; the caller publishes from the main thread and waits on an event set
by its own network thread (the cross-thread hand-off a ddnn device pays too). QoS 1 both ways,
TCP_NODELAY, MQTT v5, as ddnn's transports.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import paho.mqtt.client as paho

from ddnn.errors import DdnnError
from ddnn.runtime import libmosq
from ddnn.runtime.mqtt import set_nodelay

_IN, _OUT = "bench/in", "bench/out"


def _timed(publish: Callable[[], None], got: threading.Event, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        got.clear()
        t0 = time.perf_counter()
        publish()
        if not got.wait(5):
            raise DdnnError("the bare echo lost a message")
        times.append((time.perf_counter() - t0) * 1000)
    return times


def paho_echo_rtt(port: int, payload: bytes, repeats: int) -> list[float]:
    """Round trips (ms) of `payload` through a paho client that echoes in its callback."""

    def client() -> paho.Client:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        c.on_socket_open = set_nodelay
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    echo, caller = client(), client()
    got = threading.Event()
    echo.on_message = lambda c, ud, m: c.publish(_OUT, m.payload, qos=1)
    caller.on_message = lambda c, ud, m: got.set()
    echo.subscribe(_IN, qos=1)
    caller.subscribe(_OUT, qos=1)
    time.sleep(0.3)  # both SUBACKs in
    try:
        return _timed(lambda: caller.publish(_IN, payload, qos=1), got, repeats)
    finally:
        for c in (echo, caller):
            c.loop_stop()
            c.disconnect()


@contextmanager
def _mosq(port: int, on_message: Callable[[Any, Any], None], topic: bytes) -> Iterator[int]:
    """A raw libmosquitto client subscribed to `topic`, its loop in a thread of its own."""
    lib = libmosq.lib()
    mosq = lib.mosquitto_new(None, True, None)
    callback = libmosq.ON_MESSAGE(lambda m, obj, msg, props: on_message(m, msg.contents))
    lib.mosquitto_threaded_set(mosq, True)
    lib.mosquitto_int_option(mosq, libmosq.OPT_PROTOCOL_VERSION, libmosq.PROTOCOL_V5)
    lib.mosquitto_int_option(mosq, libmosq.OPT_TCP_NODELAY, 1)
    lib.mosquitto_message_v5_callback_set(mosq, callback)
    loop = threading.Thread(target=lib.mosquitto_loop_forever, args=(mosq, -1, 1), daemon=True)
    try:
        if lib.mosquitto_connect_bind_v5(mosq, b"127.0.0.1", port, 30, None, None):
            raise DdnnError(f"the libmosquitto echo cannot reach 127.0.0.1:{port}")
        loop.start()
        lib.mosquitto_subscribe_v5(mosq, None, topic, 1, 0, None)
        yield mosq
    finally:
        lib.mosquitto_disconnect_v5(mosq, 0, None)
        if loop.is_alive():
            loop.join(10)
        lib.mosquitto_destroy(mosq)


def libmosquitto_echo_rtt(port: int, payload: bytes, repeats: int) -> list[float]:
    """Round trips (ms) of `payload` through a libmosquitto client that echoes in its callback,
    both clients on the raw binding (`ddnn.runtime.libmosq`)."""
    lib = libmosq.lib()
    got = threading.Event()

    def echo(mosq: Any, msg: Any) -> None:
        data = ctypes.string_at(msg.payload, msg.payloadlen)
        lib.mosquitto_publish_v5(mosq, None, _OUT.encode(), len(data), data, 1, False, None)

    with ExitStack() as stack:
        stack.enter_context(_mosq(port, echo, _IN.encode()))
        caller = stack.enter_context(_mosq(port, lambda m, msg: got.set(), _OUT.encode()))
        time.sleep(0.3)  # both SUBACKs in

        def publish() -> None:
            lib.mosquitto_publish_v5(
                caller, None, _IN.encode(), len(payload), payload, 1, False, None
            )

        return _timed(publish, got, repeats)


ECHOES: dict[str, Callable[[int, bytes, int], list[float]]] = {
    "paho": paho_echo_rtt,
    "libmosquitto": libmosquitto_echo_rtt,
}
