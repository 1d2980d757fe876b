"""Closed-loop sending (runs in a generator process), for capacity: every device keeps a fixed
number of requests in flight. Each reply sends the device's next request from the transport's
network thread, so the generator needs no thread per request and stays cheap next to the server
it loads."""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from ddnn.bench.load.generator import ClosedLoopPart, GeneratorConfig, start_time
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)


def run_closed_loop(cfg: GeneratorConfig, ready: IO[str], go: IO[str]) -> ClosedLoopPart:
    """Every device keeps `cfg.window` requests in flight for `cfg.seconds`; then the answers
    still due get `cfg.deadline_ms`, and what has none by then is lost."""
    from ddnn.bench.offload import offload_features, offload_request
    from ddnn.runtime.protocol import reply_topic, request_topic
    from ddnn.runtime.transport import create_transport
    from ddnn.runtime.wire import Reply, decode_frame, encode_frame

    lock = threading.Lock()
    sent: dict[tuple[int, int], float] = {}  # (device, request id) -> perf_counter at send
    answered: list[tuple[float, float]] = []  # (round trip ms, of which in the server ms)
    counts: Counter[str] = Counter()
    stop = math.inf
    transports: list[Any] = []

    def send(j: int, rid: int) -> None:
        request = offload_request(cfg.shape, cfg.model, cfg.version, rid, names[j], feats[j])
        with lock:
            sent[j, rid] = time.perf_counter()
        try:
            transports[j].publish(topics[j], encode_frame(request))
        except DdnnError as exc:
            log.debug("%s: publish refused: %s", names[j], exc)
            with lock:
                sent.pop((j, rid), None)
                counts["send_errors"] += 1

    def handler(j: int) -> Callable[[str, bytes], None]:
        def on_reply(topic: str, payload: bytes) -> None:
            now = time.perf_counter()
            try:
                frame = decode_frame(payload)
            except DdnnError:
                frame = None
            with lock:
                t = None if frame is None else sent.pop((j, frame.request_id), None)
                if frame is None or t is None:  # that request stays in flight: lost
                    counts["unmatched"] += 1
                    return
                if isinstance(frame, Reply):
                    answered.append(((now - t) * 1000, frame.queue_ms + frame.compute_ms))
                else:
                    counts["errors"] += 1
                nxt = next(ids[j])
            if now < stop:
                send(j, nxt)

        return on_reply

    names = cfg.names
    topics = [request_topic(cfg.model, 1, name) for name in names]
    feats = [offload_features(cfg.shape, k) for k in cfg.device_ids]
    # a random start, as Requester does: the server drops an id it has seen from a device as a
    # duplicate, and the same device names come back in every step against the same server
    ids = [itertools.count(secrets.randbits(40) + 1) for _ in names]
    try:
        for j, name in enumerate(names):
            transports.append(create_transport(cfg.url))
            transports[j].subscribe(reply_topic(name), handler(j))
        t0 = start_time(ready, go)
        time.sleep(max(0.0, t0 - time.perf_counter()))
        cpu0 = time.process_time()
        stop = t0 + cfg.seconds
        for j in range(len(names)):
            for _ in range(cfg.window):
                with lock:
                    rid = next(ids[j])
                send(j, rid)
        time.sleep(max(0.0, stop - time.perf_counter()))
        cpu = time.process_time() - cpu0
        with lock:
            done = len(answered)
        end = stop + cfg.deadline_ms / 1000  # the last requests' answers
        while time.perf_counter() < end and sent:
            time.sleep(0.01)
    finally:
        for t in transports:
            t.close()
    with lock:
        counts["lost"] = len(sent)
    return ClosedLoopPart(
        answered_in_window=done,
        counts=dict(counts),
        latency_ms=[round(x, 3) for x, _ in answered],
        server_ms=[round(x, 3) for _, x in answered],
        cpu_s=cpu,
        last_send_s=cfg.seconds,
    )
