"""Open-loop sending (runs in a generator process): every device sends on a fixed schedule and
never waits for answers, so a slow server cannot slow the senders down and so hide its latency
(coordinated omission). Latency counts from the *scheduled* send: a late send counts against it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import IO, Any

import numpy as np

from ddnn.bench.load.generator import GeneratorConfig, OpenLoopPart, start_time
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)


def schedule(cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(due times s after start, local device index, request number), sorted by time. Device k
    sends request n at (n + k / K) / R: evenly spread, no synchronized bursts."""
    per_device = max(1, round(cfg.seconds * cfg.rate))
    n = np.arange(per_device)
    times = np.concatenate([(n + k / cfg.devices) / cfg.rate for k in cfg.device_ids])  # [L*N]
    local = np.repeat(np.arange(len(cfg.device_ids)), per_device)  # [L*N]
    number = np.tile(n, len(cfg.device_ids))  # [L*N]
    order = np.argsort(times, kind="stable")
    return times[order], local[order], number[order]


def run_open_loop(cfg: GeneratorConfig, ready: IO[str], go: IO[str]) -> OpenLoopPart:
    """Connect the devices, say `ready`, wait for the start time on `go`, send on schedule,
    wait for every answer until its deadline and classify each request."""
    from ddnn.bench.offload import offload_features, offload_request
    from ddnn.runtime.client import Requester
    from ddnn.runtime.protocol import request_topic
    from ddnn.runtime.transport import create_transport
    from ddnn.runtime.wire import ErrorFrame, Reply, Status

    names = cfg.names
    transports, requesters = [], []
    try:
        for name in names:
            transports.append(create_transport(cfg.url))
            requesters.append(Requester(transports[-1], name).start())
        topics = [request_topic(cfg.model, 1, name) for name in names]
        feats = [offload_features(cfg.shape, k) for k in cfg.device_ids]
        due, local, number = schedule(cfg)
        t0 = start_time(ready, go)
        cpu0 = time.process_time()
        sent: list[Any] = []  # Pending, or None when the publish was refused
        for t, j, n in zip(due.tolist(), local.tolist(), number.tolist(), strict=True):
            wait = t0 + t - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            req = requesters[j]
            request = offload_request(
                cfg.shape, cfg.model, cfg.version, req.next_id(), names[j], feats[j], n
            )
            try:
                sent.append(req.send(topics[j], request)[0])
            except DdnnError as exc:
                log.debug("%s: publish refused: %s", names[j], exc)
                sent.append(None)
        last_send = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        deadline = cfg.deadline_ms / 1000
        for t, pending in zip(due.tolist(), sent, strict=True):
            if pending is not None:
                pending.done.wait(max(0.0, t0 + t + deadline - time.perf_counter()))
    finally:
        for r in requesters:
            r.close()
        for t in transports:
            t.close()
    counts: Counter[str] = Counter()
    latency, lag = [], []  # ms from the scheduled send; ms the send was late
    for t, pending in zip(due.tolist(), sent, strict=True):
        if pending is None:
            counts["error"] += 1
            counts["send_errors"] += 1
            continue
        counts["sent"] += 1
        lag.append((pending.sent_at - t0 - t) * 1000)
        answer = pending.answer
        took = (pending.received_at - t0 - t) * 1000 if answer is not None else math.inf
        if isinstance(answer, Reply):
            latency.append(took)
        if answer is None or took > cfg.deadline_ms:
            counts["lost"] += 1
            counts["late"] += answer is not None
        elif isinstance(answer, ErrorFrame) and answer.code is Status.OVERLOADED:
            counts["shed"] += 1
        elif isinstance(answer, ErrorFrame):
            counts["error"] += 1
        else:
            counts["ok"] += 1
    unanswered = counts["lost"] - counts["late"]
    return OpenLoopPart(
        scheduled=len(due),
        counts=dict(counts),
        latency_ms=[round(x, 3) for x in latency] + [math.inf] * unanswered,
        lag_ms=[round(x, 3) for x in lag],
        last_send_s=last_send,
        cpu_s=cpu,
    )
