"""Load and abuse on a real deployment: more requests than the server can take, a crashing
worker thread, huge payloads and floods. The server sheds, restarts and keeps serving, its memory
flat; docs/reliability.md keeps the numbers these tests log (lines starting `FAULT`)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from ddnn.runtime.client import Requester
from ddnn.runtime.config import (
    DeviceConfig,
    ServerConfig,
)
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.mqtt import MqttTransport
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.transport import create_transport
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    encode_frame,
    encode_tensor,
    request_topic,
)
from ddnn.store.artifact import read_spec_doc

from .faultkit import (
    READY_S,
    metrics_of,
    raw_views,
    report,
    rss_kb,
    serve,
    wait_until,
)

pytestmark = pytest.mark.integration


# -- 6. more requests than the server can take -------------------------------------------------


def test_back_pressure_sheds_and_memory_stays_flat(tiny_ddnn, broker, tmp_path):
    """One worker and a queue of 4 against 8 clients blasting 40 requests each at once, five
    times: each request gets a reply or an OVERLOADED error, and the server's RSS after the
    last burst is within 8 MiB of its RSS after the first."""
    started = time.monotonic()
    clients, per_client, bursts, rss_bound_kb = 8, 40, 5, 8 * 1024
    server = serve(
        "server", tiny_ddnn, broker.url, tmp_path,
        ServerConfig(workers=1, queue_limit=4, max_batch=1),
    )  # fmt: skip
    doc = read_spec_doc(tiny_ddnn)
    model, version = str(doc["name"]), int(doc["version"])
    x = encode_tensor(raw_views(1, tiny_ddnn)[0][None], Encoding.UNIT8, name="x")  # [1, C, h, w]
    transports: list[MqttTransport] = []
    requesters: list[Requester] = []
    outcomes: Counter[str] = Counter()
    rss: list[int] = []

    def blast(requester: Requester, burst: int) -> Counter[str]:
        waiting = []
        for k in range(per_client):
            rid = requester.next_id()
            topic = request_topic(model, 0, requester.identity)
            request = Request(rid, model, version, requester.identity, burst * 1000 + k, 0, (x,))
            waiting.append((rid, requester.send(topic, request)[0]))
        end = time.perf_counter() + 30.0  # one deadline for the whole burst
        seen: Counter[str] = Counter()
        for rid, pending in waiting:
            answer = requester.wait(rid, pending, end - time.perf_counter())
            if isinstance(answer, Reply) and answer.status == Status.OK:
                seen["ok"] += 1
            elif isinstance(answer, ErrorFrame) and answer.code == Status.OVERLOADED:
                seen["overloaded"] += 1
            else:
                seen["unanswered" if answer is None else f"other: {answer}"] += 1
        return seen

    try:
        server.wait_ready(READY_S)
        for i in range(clients):
            transports.append(MqttTransport.from_url(broker.url))
            requesters.append(Requester(transports[-1], f"blast{i}").start())
        with ThreadPoolExecutor(clients) as pool:
            for burst in range(bursts):
                for seen in pool.map(lambda r, b=burst: blast(r, b), requesters):
                    outcomes += seen
                rss.append(rss_kb(server.proc.pid))
        dropped = sum(r.dropped_replies for r in requesters)
        shed = metrics_of(server)
        assert server.proc.poll() is None
    finally:
        for r in requesters:
            r.close()
        for t in transports:
            t.close()
        server.stop()
    total = clients * per_client * bursts
    assert outcomes["ok"] + outcomes["overloaded"] == total, dict(outcomes)
    assert outcomes["ok"] > 0 and outcomes["overloaded"] > 0, dict(outcomes)
    assert dropped == 0  # one answer per request
    assert shed.get('ddnn_errors_total{code="overloaded"}') == outcomes["overloaded"]
    assert rss[-1] - rss[0] <= rss_bound_kb, f"server RSS grew: {rss} kB"
    report(
        "back_pressure", started, requests=total, ok=outcomes["ok"],
        overloaded=outcomes["overloaded"], unanswered=total - outcomes["ok"] -
        outcomes["overloaded"], rss_kb_after_each_burst=rss,
    )  # fmt: skip


# -- a server worker thread that crashes -------------------------------------------------------


def test_a_crashed_worker_is_restarted_and_counted(tiny_ddnn, hub_name):
    """A bug that escapes a worker's own error handling (here: in the error path itself) must
    not cost the server its only worker: the loop restarts and `worker_restarts_total` counts it.
    In-memory transport: no broker needed."""
    transports = [create_transport(f"memory://{hub_name}") for _ in range(2)]
    # every request through the worker pool (an idle server would answer a lone one inline)
    server = InferenceServer(
        transports[0], ModelDB([tiny_ddnn]), ServerConfig(workers=1, inline=False)
    ).start()
    device = DeviceClient(
        transports[1],
        tiny_ddnn,
        DeviceConfig(device_id="dev0", mode="server-only", deadline_ms=300),
    ).start()
    xs = raw_views(2, tiny_ddnn)
    crashed = threading.Event()

    def broken(*args: object) -> None:
        crashed.set()
        raise RuntimeError("a bug")

    try:
        server._process = broken  # type: ignore[method-assign]  # the batch fails ...
        server._error = broken  # type: ignore[method-assign]  # ... and so does answering it
        first = device.infer(xs[0], 0)
        wait_until(
            lambda: server.metrics.counter("worker_restarts_total") >= 1, 5, "a worker restart"
        )
        del server._process, server._error
        device.config = replace(device.config, deadline_ms=5000)
        second = device.infer(xs[1], 1)
        healthy = server.healthy()
    finally:
        device.close()
        server.close()
        for t in transports:
            t.close()
    assert crashed.is_set()
    assert first.status == "lost" and first.total_ms < 1000  # bounded, not a hang
    assert second.status == "ok" and second.predicted >= 0  # the pool still has its worker
    assert healthy
    assert server.metrics.counter("worker_restarts_total") == 1


# -- 7. abuse: huge payloads, floods of requests and connections --------------------------------


def test_abuse_costs_a_server_nothing_lasting(tiny_ddnn, tmp_path):
    """On a broker that forwards 16 MiB packets: 1 MB requests (refused by size before any
    decoding), 10 MB ones (never delivered: the server announced its 1 MiB Maximum Packet Size),
    a flood of undecodable and wrongly shaped requests over 100 connections. Afterwards the
    server's RSS is within 10 % of what it was before, and its log grew by rate-limited
    warnings only (an abuse run once left +70 MB RSS and 65,487 warning lines)."""
    from ddnn.runtime.broker import MosquittoBroker, find_mosquitto

    try:
        find_mosquitto()
    except Exception as exc:
        pytest.skip(str(exc))
    started = time.monotonic()
    doc = read_spec_doc(tiny_ddnn)
    model, version = str(doc["name"]), int(doc["version"])
    x = encode_tensor(raw_views(1, tiny_ddnn)[0][None], Encoding.UNIT8, name="x")
    wrong = encode_tensor(np.zeros((1, 1, 5, 5), np.float32), name="x")
    with MosquittoBroker(max_packet_size=16 << 20) as broker:
        server = serve("server", tiny_ddnn, broker.url, tmp_path, ServerConfig(workers=1))
        big = MqttTransport.from_url(broker.url, max_packet_size=16 << 20)
        requester = Requester(big, "abuser").start()
        floods: list[MqttTransport] = []
        try:
            server.wait_ready(READY_S)

            def ask(rid: int) -> object:
                request = Request(rid, model, version, "abuser", rid, 0, (x,))
                pending, _ = requester.send(request_topic(model, 0, "abuser"), request)
                return requester.wait(rid, pending, 10.0)

            assert all(isinstance(ask(rid), Reply) for rid in range(1, 21))  # warm up
            time.sleep(0.5)
            rss_before, log_before = rss_kb(server.proc.pid), server.log_path.stat().st_size
            topic = request_topic(model, 0, "abuser")
            header = b"DN\x02\x01" + (10**6).to_bytes(8, "little")  # a request, id 1000000
            for size in (10**6,) * 5 + (10**7,) * 2:
                big.publish(topic, header + bytes(size))
            sent = 5
            for c in range(100):  # a flood over 100 connections, open until it was read
                floods.append(MqttTransport.from_url(broker.url))
                own = request_topic(model, 0, f"flood{c}")
                for k in range(5):
                    floods[-1].publish(own, header + os.urandom(k))
                    junk = Request(1 + k, model, version, f"flood{c}", k, 0, (wrong,))
                    floods[-1].publish(own, encode_frame(junk))
                sent += 10
            received: list[float] = []
            try:
                wait_until(
                    lambda: received.append(metrics_of(server)["ddnn_requests_received_total"])
                    or received[-1] >= 20 + sent,
                    60, "the flood to be read", [server],
                )  # fmt: skip
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {received[-1]} of {20 + sent} read") from None
            assert isinstance(ask(100), Reply)  # still serving
            time.sleep(0.5)
            rss_after, log_after = rss_kb(server.proc.pid), server.log_path.stat().st_size
            samples = metrics_of(server)
        finally:
            for flood in floods:
                flood.close()
            requester.close()
            big.close()
            server.stop()
    assert samples["ddnn_requests_received_total"] == 20 + sent + 1  # the 10 MB ones never came
    assert samples['ddnn_errors_total{code="bad_input"}'] == 5 + 500
    assert samples['ddnn_errors_total{code="malformed"}'] == 500
    assert samples['ddnn_log_suppressed_total{key="malformed"}'] >= 490
    assert rss_after <= rss_before * 1.10, f"RSS {rss_before} -> {rss_after} kB"
    assert log_after - log_before < 16_000, f"the log grew by {log_after - log_before} bytes"
    report(
        "abuse", started, requests=sent, rss_kb_before=rss_before, rss_kb_after=rss_after,
        log_bytes=log_after - log_before,
    )  # fmt: skip
