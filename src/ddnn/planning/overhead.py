"""The MQTT path's own time per offload: a QoS-1 request and its reply through a private
Mosquitto on loopback, between two clients of the runtime's transport, with the request and
reply sizes of the design.

The link model (predict.comm_ms) counts the bytes at the link's rate and its delay; a real
offload also crosses the broker twice (request to the server, reply back) and does both
clients' MQTT work. This floor is that part: it is measured on loopback, where the link adds
nothing, and added to T_comm as it is (docs/planning.md).
"""

from __future__ import annotations

import logging
import threading
import time

from ddnn.errors import DdnnError
from ddnn.planning.records import Timing, WireBytes

log = logging.getLogger(__name__)

REQUEST, REPLY = "ddnn/plan/request", "ddnn/plan/reply"
WARMUP = 5
TIMEOUT_S = 10.0


def mqtt_round_trip(wire: WireBytes, repeats: int) -> Timing:
    """`repeats` request/reply round trips (ms) with `wire`'s frame sizes, one after another."""
    from ddnn.runtime.broker import MosquittoBroker
    from ddnn.runtime.transport import create_transport

    request, reply = b"q" * wire.request_frame, b"r" * wire.reply_frame
    answered = threading.Event()
    with MosquittoBroker() as broker:
        device, server = create_transport(broker.url), create_transport(broker.url)
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
    log.info("MQTT round trip on loopback: median %.2f ms", found.median)
    return found
