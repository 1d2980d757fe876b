"""The MQTT path's own time per offload: a QoS-1 request and its reply through a private
Mosquitto on loopback, between two clients of the runtime's transport, with the request and
reply sizes of the design; the device's client connects through the emulation's relay with no
delay and no rate, as an emulated device's does through one with them.

The link model (predict.comm_ms) counts the bytes at the link's rate and its delay; a real
offload also crosses the broker twice (request to the server, reply back), the relay's
per-chunk work both ways, and both clients' MQTT work. This floor is that part: measured where
the link adds nothing, and added to T_comm as it is (docs/planning.md).
"""

from __future__ import annotations

import logging
import threading
import time

from ddnn.errors import DdnnError
from ddnn.planning.records import Timing, WireBytes

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
REQUEST, REPLY = "ddnn/plan/request", "ddnn/plan/reply"
WARMUP = 5
TIMEOUT_S = 10.0


def mqtt_round_trip(wire: WireBytes, repeats: int) -> Timing:
    """`repeats` request/reply round trips (ms) with `wire`'s frame sizes, one after another."""
    from ddnn.emulation.relay import DelayRelay
    from ddnn.runtime.broker import MosquittoBroker
    from ddnn.runtime.transport import create_transport

    request, reply = b"q" * wire.request_frame, b"r" * wire.reply_frame
    answered = threading.Event()
    with (
        MosquittoBroker() as broker,
        DelayRelay((LOOPBACK, 0), (LOOPBACK, broker.port), 0.0) as relay,
    ):
        assert relay.address is not None
        device = create_transport(f"mqtt://{LOOPBACK}:{relay.address[1]}")
        server = create_transport(broker.url)
        try:
            server.subscribe(REQUEST, lambda _t, _p: server.publish(REPLY, reply))
            device.subscribe(REPLY, lambda _t, _p: answered.set())
            times = []
            for i in range(WARMUP + repeats):
                answered.clear()
                start = time.perf_counter()
                device.publish(REQUEST, request)
                if not answered.wait(TIMEOUT_S):
                    raise DdnnError(f"no reply through {broker.url} within {TIMEOUT_S:g} s")
                if i >= WARMUP:  # the first ones also wait for the subscriptions to settle
                    times.append((time.perf_counter() - start) * 1000)
        finally:
            device.close()
            server.close()
    found = Timing(tuple(times))
    log.info("MQTT round trip through a relay on loopback: median %.2f ms", found.median)
    return found
