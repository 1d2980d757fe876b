"""The live part: a real `InferenceServer` fed fuzzed messages in chunks, every answer matched
to what the protocol requires, and a valid request probed after each chunk."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any

from ddnn.bench.fuzz.cases import CATEGORIES, Expect, Served, build, expectation, live_cases
from ddnn.bench.fuzz.properties import Tally
from ddnn.runtime.protocol import replies_root, request_topic
from ddnn.runtime.wire import ErrorFrame, FrameError, Reply, Status, decode_frame

log = logging.getLogger(__name__)


class _Collector:
    """Every frame published on any reply topic, by device."""

    def __init__(self, ignore: str) -> None:
        self.ignore = ignore  # the prober's device: it hears its own answers
        self.cond = threading.Condition()
        self.by_device: dict[str, list[bytes]] = {}

    def __call__(self, topic: str, payload: bytes) -> None:
        device = topic.rsplit("/", 1)[-1]
        if device == self.ignore:
            return
        with self.cond:
            self.by_device.setdefault(device, []).append(payload)
            self.cond.notify_all()

    def take(self) -> dict[str, list[bytes]]:
        with self.cond:
            out, self.by_device = self.by_device, {}
            return out


class _ErrorLogs(logging.Handler):
    """Counts ERROR records with a traceback from ddnn: an exception that reached a catch-all."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(f"{record.name}: {record.getMessage()}")


def _settle(
    collector: _Collector,
    pending: dict[str, list[Expect]],
    tally: Tally,
    timeout: float,
) -> None:
    """Wait until every expected answer came, then match answers to expectations."""
    end = time.monotonic() + timeout

    def arrived() -> bool:
        have = {d: len(v) for d, v in collector.by_device.items()}
        return all(have.get(d, 0) >= sum(not e.optional for e in exp) for d, exp in pending.items())

    with collector.cond:
        while not arrived() and time.monotonic() < end:
            collector.cond.wait(0.05)
    time.sleep(0.02)  # stray answers, if any, arrive with the rest
    got = collector.take()
    for device, payloads in got.items():
        expected = pending.get(device, [])
        for payload in payloads:
            try:
                answer = decode_frame(payload)
            except FrameError as exc:
                tally.fail("bad answers", exc, payload)
                continue
            rid = answer.request_id if isinstance(answer, Reply | ErrorFrame) else None
            match = next((e for e in expected if e.answer is None and e.request_id == rid), None)
            if match is None or not isinstance(answer, Reply | ErrorFrame):
                tally.fail("unexpected answers", AssertionError(repr(answer)), payload)
                continue
            match.answer = answer
    for device, expected in pending.items():
        for e in expected:
            ans = e.answer
            if ans is None:
                if not e.optional:
                    tally.fail("unanswered", AssertionError(f"no answer to fz{e.index}"), device)
                else:
                    tally.counts["duplicates dropped"] += 1
            elif isinstance(ans, ErrorFrame):
                tally.counts["rejected"] += 1
                tally.counts[f"code {ans.code.name}"] += 1
                if ans.code is Status.INTERNAL:
                    tally.fail("internal errors", AssertionError(ans.message), device)
                if e.must_error and ans.code not in (Status.MALFORMED, Status.OVERLOADED):
                    tally.fail("wrong codes", AssertionError(ans.code.name), device)
            elif e.must_error:
                tally.fail("accepted malformed", AssertionError(repr(ans)), device)
            else:
                tally.counts["accepted"] += 1


def live_fuzz(
    run_dir: str,
    messages: int,
    seed: int | None = None,
    progress: bool = False,
    chunk: int = 200,
    *,
    mqtt_client: str | None = None,
) -> dict[str, Any]:
    """Send `messages` fuzzed messages to a real InferenceServer on an in-memory hub (or, with
    `mqtt_client`, on a Mosquitto of its own through that MQTT client library), in chunks;
    after each chunk a valid request must still be answered."""
    from tqdm.auto import tqdm

    from ddnn.bench.offload import offload_request, offload_shape
    from ddnn.runtime.client import Requester
    from ddnn.runtime.config import ServerConfig
    from ddnn.runtime.server import InferenceServer, ModelDB
    from ddnn.runtime.transport import create_transport
    from ddnn.store.artifact import open_model

    stored = open_model(run_dir)
    model = stored.load()
    served = Served(stored.name, stored.version, offload_shape(model), len(model.spec.sections))
    cases = live_cases(messages, seed)

    db = ModelDB([run_dir])
    tally = Tally()
    probes = Counter[str]()
    errors = _ErrorLogs()
    collector = _Collector(ignore="probe")
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        watched = logging.getLogger("ddnn")
        watched.addHandler(errors)
        stack.callback(watched.removeHandler, errors)
        url, client = f"memory://fuzz-{uuid.uuid4().hex[:8]}", {}
        if mqtt_client is not None:
            from ddnn.runtime.broker import MosquittoBroker

            url, client = stack.enter_context(MosquittoBroker()).url, {"mqtt_client": mqtt_client}
        server_t, sender_t, probe_t = (
            stack.enter_context(create_transport(url, **client)) for _ in range(3)
        )
        # before the transports close (exit callbacks run in reverse)
        server = stack.enter_context(InferenceServer(server_t, db, ServerConfig(workers=2)))
        prober = stack.enter_context(Requester(probe_t, "probe"))
        bar = stack.enter_context(
            tqdm(total=len(cases), desc="live server", unit="msg", disable=not progress)
        )
        sender_t.subscribe(f"{replies_root()}/+", collector)  # every device's answers
        seen: set[tuple[str, int]] = set()
        for lo in range(0, len(cases), chunk):
            pending: dict[str, list[Expect]] = {}
            for i in range(lo, min(lo + chunk, len(cases))):
                topic, payload = build(cases[i], i, i + 1, served)
                address, expect = expectation(i, cases[i], topic, payload, seen)
                tally.counts["tried"] += 1
                tally.counts[f"sent {cases[i].category}"] += 1
                if address is None:
                    tally.counts["unanswerable"] += 1
                else:
                    pending.setdefault(address, []).append(expect)
                sender_t.publish(topic, payload)
            _settle(collector, pending, tally, timeout=10.0)
            bar.update(min(chunk, len(cases) - lo))
            # the server must still answer a valid request
            rid = prober.next_id()
            probe = offload_request(served.shape, served.name, served.version, rid, "probe")
            pend, _ = prober.send(request_topic(served.name, 1, "probe"), probe)
            answer = prober.wait(rid, pend, 5.0)
            good = isinstance(answer, Reply) and answer.status is Status.OK
            probes["ok" if good else "failed"] += 1
        healthy = server.healthy()
    c = tally.counts
    return {
        "tried": c["tried"],
        "by_category": {k: c[f"sent {k}"] for k in CATEGORIES},
        "rejected": c["rejected"],
        "accepted": c["accepted"],
        "unanswerable": c["unanswerable"],
        "duplicates_dropped": c["duplicates dropped"],
        "codes": {k[5:]: v for k, v in c.items() if k.startswith("code ")},
        "unanswered": c["unanswered"],
        "accepted_malformed": c["accepted malformed"],
        "wrong_codes": c["wrong codes"],
        "unexpected_answers": c["unexpected answers"] + c["bad answers"],
        "internal_errors": c["internal errors"],
        "escaped": len(errors.records),
        "escaped_examples": errors.records[:10],
        "probes_ok": probes["ok"],
        "probes_failed": probes["failed"],
        "server_healthy": healthy,
        "seconds": time.perf_counter() - start,
        "failures": tally.failures,
    }


LIVE_FAILURES = (
    "unanswered",
    "accepted_malformed",
    "wrong_codes",
    "unexpected_answers",
    "internal_errors",
    "escaped",
    "probes_failed",
)
