"""Fuzzing the wire format: one definition of the hypothesis strategies and properties, used by
tests/runtime/test_wire_fuzz.py (a few hundred examples) and by `ddnn bench fuzz` (many more),
plus a live part: a real `InferenceServer` fed fuzzed and mutated messages.

The contract checked: `decode_frame` raises `FrameError` and nothing else, whatever the bytes;
whatever a server receives on a request topic, it answers with an error frame when a reply
address can be read (the request's device, else the topic's), never stops, and still answers the
next valid request.

hypothesis is a dev dependency, so this module is imported only by the test and the bench.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ddnn.errors import DdnnError

try:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise DdnnError(
        "fuzzing needs hypothesis, a development dependency: pip install -e .[dev]"
    ) from exc

from ddnn.runtime.protocol import parse_request_topic, replies_root, request_topic, requests_root
from ddnn.runtime.replies import readable_request_id
from ddnn.runtime.wire import (
    MAGIC,
    VERSION,
    Encoding,
    ErrorFrame,
    Frame,
    FrameError,
    Reply,
    Request,
    Status,
    Tensor,
    decode_frame,
    decode_tensor,
    encode_frame,
    encode_tensor,
)

log = logging.getLogger(__name__)

# --- strategies ------------------------------------------------------------------------------

ALNUM = "abcXYZ019"
ids = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(ALNUM + "._-", max_size=11))
u64 = st.integers(1, 2**64 - 1)
finite32 = st.floats(-1e6, 1e6, width=32)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    """Any encoding, up to 4 small dimensions (zero-sized ones too), any UTF-8 name."""
    encoding = draw(st.sampled_from(Encoding))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    # Values come from a drawn seed: the structure is what is being fuzzed, and this is fast.
    values = np.random.default_rng(draw(st.integers(0, 2**32))).standard_normal(shape) * 100
    if encoding is Encoding.BITS:
        values = np.where(values >= 0, 1.0, -1.0)
    if encoding is Encoding.UNIT8:
        values = 1 / (1 + np.exp(-values / 100))  # into [0, 1]
    name = draw(st.text(min_size=1, max_size=6))
    return encode_tensor(values, encoding, name=name)


requests = st.builds(
    Request,
    request_id=u64,
    model=ids,
    model_version=st.integers(0, 2**16 - 1),
    device_id=ids,
    frame_id=st.integers(0, 2**64 - 1),
    section=st.integers(0, 255),
    tensors=st.lists(tensors(), min_size=1, max_size=3).map(tuple),
)
replies = st.builds(
    Reply,
    request_id=u64,
    status=st.sampled_from(Status),
    predicted=st.integers(-(2**31), 2**31 - 1),
    exit_index=st.integers(0, 255),
    entropy=finite32,
    queue_ms=finite32,
    compute_ms=finite32,
    missing_devices=st.lists(ids, max_size=3).map(tuple),
    tensors=st.lists(tensors(), max_size=2).map(tuple),
)
errors = st.builds(
    ErrorFrame,
    request_id=st.none() | u64,
    code=st.sampled_from([s for s in Status if s.is_error]),
    message=st.text(max_size=40),
)
frames = st.one_of(requests, replies, errors)
random_bytes = st.binary(max_size=300)
# Random bodies behind a valid magic and version, so the fuzz reaches the kind readers.
headed_bytes = st.builds(
    lambda kind, body: MAGIC + bytes([VERSION, kind]) + body,
    st.sampled_from([1, 2, 3, 4]),
    random_bytes,
)

MUTATIONS = ("set", "flip", "insert", "delete", "truncate")
# (action, position, byte value, bit, inserted bytes, deleted count): drawn without knowing the
# frame, so the live fuzz can apply them to a request it builds later.
Mutation = tuple[str, int, int, int, bytes, int]
mutation_lists = st.lists(
    st.tuples(
        st.sampled_from(MUTATIONS),
        st.integers(0, 2**16),
        st.integers(0, 255),
        st.integers(0, 7),
        st.binary(min_size=1, max_size=8),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=3,
)


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply byte-level edits; positions wrap around the (changing) length."""
    out = bytearray(data)
    for action, pos, value, bit, inserted, count in mutations:
        where = pos % (len(out) + 1)
        if action == "set" and where < len(out):
            out[where] = value
        elif action == "flip" and where < len(out):
            out[where] ^= 1 << bit
        elif action == "insert":
            out[where:where] = inserted
        elif action == "delete":
            del out[where : where + count]
        elif action == "truncate":
            del out[where:]
    return bytes(out)


mutated_frames = st.builds(mutate, frames.map(encode_frame), mutation_lists)


# --- properties ------------------------------------------------------------------------------


def check_round_trip(frame: Frame) -> Frame:
    """A valid frame decodes to itself from bytes, bytearray and memoryview."""
    data = encode_frame(frame)
    assert decode_frame(data) == frame
    assert decode_frame(bytearray(data)) == frame
    assert decode_frame(memoryview(data)) == frame
    return frame


def decode_or_frame_error(data: bytes) -> Frame | None:
    """The decoder's contract: a frame, or FrameError with a message; anything decoded is
    canonical (encodes back to the same length and round-trips). Other exceptions propagate."""
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        assert str(exc)  # always says what is wrong
        return None
    once = encode_frame(frame)  # anything decoded is valid enough to encode again
    assert len(once) == len(data)
    assert encode_frame(decode_frame(once)) == once
    for tensor in frame.tensors if not isinstance(frame, ErrorFrame) else ():
        assert decode_tensor(tensor).shape == tensor.shape
    return frame


PROPERTIES: dict[str, tuple[Any, Callable[[Any], Frame | None]]] = {
    "valid frames round trip": (frames, check_round_trip),
    "random bytes": (random_bytes, decode_or_frame_error),
    "random bytes behind a valid header": (headed_bytes, decode_or_frame_error),
    "mutated valid frames": (mutated_frames, decode_or_frame_error),
}


def _settings(examples: int) -> settings:
    """Generation only: failures are counted, not shrunk, so a long run reports all of them."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # leave no .hypothesis/ behind
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _drive(strategy: Any, body: Callable[[Any], None], examples: int, seed: int | None) -> None:
    """Call `body` on up to `examples` values hypothesis draws from `strategy`."""

    def run(value: Any) -> None:  # a plain function: hypothesis inspects its signature
        body(value)

    test = _settings(examples)(given(strategy)(run))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    test()


@dataclass
class _Tally:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, str]] = field(default_factory=list)

    def fail(self, kind: str, exc: BaseException, data: Any) -> None:
        self.counts[kind] += 1
        if len(self.failures) < 10:
            text = data.hex() if isinstance(data, bytes) else repr(data)
            self.failures.append({"kind": kind, "error": repr(exc), "input": text[:400]})


def run_property(
    name: str, examples: int, seed: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """One decoder property over `examples` generated inputs: how many were tried, rejected
    with FrameError, accepted; exceptions other than FrameError (`escaped`) and broken
    round trips (`violations`) are counted, never raised."""
    from tqdm.auto import tqdm

    strategy, check = PROPERTIES[name]
    tally = _Tally()
    bar = tqdm(total=examples, desc=name, unit="ex", disable=not progress, leave=False)

    def body(value: Any) -> None:
        bar.update(1)
        tally.counts["tried"] += 1
        try:
            frame = check(value)
        except AssertionError as exc:
            tally.fail("violations", exc, value)
            return
        except Exception as exc:
            tally.fail("escaped", exc, value)
            return
        tally.counts["rejected" if frame is None else "accepted"] += 1

    start = time.perf_counter()
    try:
        _drive(strategy, body, examples, seed)
    finally:
        bar.close()
    c = tally.counts
    return {
        "property": name,
        "tried": c["tried"],
        "rejected": c["rejected"],
        "accepted": c["accepted"],
        "escaped": c["escaped"],
        "violations": c["violations"],
        "seconds": time.perf_counter() - start,
        "failures": tally.failures,
    }


# --- the live part ---------------------------------------------------------------------------

CATEGORIES = ("garbage", "mutated", "frame", "wrong-input", "topic")
topic_levels = st.text(  # what a broker takes: no surrogates, controls or non-characters
    st.characters(exclude_characters="/+#\x00", exclude_categories=["Cs", "Cc", "Cn"]),
    min_size=1,
    max_size=12,
)


@dataclass(frozen=True)
class LiveCase:
    """How to build one message; built at send time with a unique device id and request id,
    so every answer can be told apart."""

    category: str
    garbage: bytes = b""
    mutations: tuple[Mutation, ...] = ()
    frame: Frame | None = None
    version_offset: int = 0
    tensors: tuple[Tensor, ...] = ()
    topic_level: str = ""
    valid_payload: bool = False


_CASES = {
    "garbage": st.builds(LiveCase, st.just("garbage"), garbage=random_bytes),
    "mutated": st.builds(LiveCase, st.just("mutated"), mutations=mutation_lists.map(tuple)),
    "frame": st.builds(LiveCase, st.just("frame"), frame=frames),
    "wrong-input": st.builds(
        LiveCase,
        st.just("wrong-input"),
        version_offset=st.sampled_from([0, 0, 0, 1]),  # mostly right model, wrong tensors
        tensors=st.lists(tensors(), min_size=1, max_size=2).map(tuple),
    ),
    "topic": st.builds(
        LiveCase,
        st.just("topic"),
        topic_level=topic_levels,
        garbage=random_bytes,
        valid_payload=st.booleans(),
    ),
}


def live_cases(messages: int, seed: int | None) -> list[LiveCase]:
    """`messages` cases, the categories taking turns (equally many of each)."""
    per_category: list[list[LiveCase]] = []
    for i, category in enumerate(CATEGORIES):
        cases: list[LiveCase] = []
        count = (messages + len(CATEGORIES) - 1 - i) // len(CATEGORIES)
        if count:
            _drive(_CASES[category], cases.append, count, seed)
        per_category.append(cases)
    return [c for turn in itertools.zip_longest(*per_category) for c in turn if c is not None]


@dataclass
class _Expect:
    """What must come back to `address` for one message."""

    index: int
    category: str
    request_id: int | None  # the id the answer must carry (None: the request was unreadable)
    must_error: bool  # malformed for this server: only an ErrorFrame is a correct answer
    optional: bool = False  # a re-delivered (device, request id): the server may drop it
    answer: Reply | ErrorFrame | None = None


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


@dataclass
class _Served:
    name: str
    version: int
    shape: tuple[int, ...]
    sections: int


def _build(case: LiveCase, i: int, rid: int, m: _Served) -> tuple[str, bytes]:
    """(topic, payload) for case number i; its device id is fz<i>."""
    from ddnn.bench.offload import offload_features, offload_request

    device = f"fz{i}"
    topic = request_topic(m.name, 1, device)
    valid = offload_request(m.shape, m.name, m.version, rid, device, offload_features(m.shape, i))
    if case.category == "garbage":
        return topic, case.garbage
    if case.category == "mutated":
        return topic, mutate(encode_frame(valid), list(case.mutations))
    if case.category == "frame":
        frame = case.frame
        if isinstance(frame, Request):  # answers go to its device: keep them apart
            frame = replace(frame, device_id=device)
            topic = request_topic(m.name, frame.section % m.sections, device)
        return topic, encode_frame(frame)  # type: ignore[arg-type]
    if case.category == "wrong-input":
        version = (m.version + case.version_offset) % 2**16
        req = Request(rid, m.name, version, device, i, 1, case.tensors)
        return topic, encode_frame(req)
    # "topic": a request topic whose device level is anything MQTT allows
    weird = f"{requests_root()}/{m.name}/1/{case.topic_level}"
    return weird, encode_frame(valid) if case.valid_payload else case.garbage


def _expectation(
    i: int, case: LiveCase, topic: str, payload: bytes, seen: set[tuple[str, int]]
) -> tuple[str | None, _Expect]:
    """Where the answer must go and what it must be, from the protocol alone: to the device
    that owns the request topic (never one named in the payload), with the request id whenever
    the frame's header says it is a request."""
    try:
        frame: Frame | None = decode_frame(payload)
    except FrameError:
        frame = None
    try:
        parsed: tuple[str, int, str] | None = parse_request_topic(topic)
    except DdnnError:
        parsed = None
    address = parsed[2] if parsed else None  # else nobody can be answered
    if isinstance(frame, Request):
        matches = parsed == (frame.model, frame.section, frame.device_id)
        key = (frame.device_id, frame.request_id)
        optional = matches and key in seen
        if matches:
            seen.add(key)
        return address, _Expect(i, case.category, frame.request_id, not matches, optional)
    return address, _Expect(i, case.category, readable_request_id(payload), True)


def _settle(
    collector: _Collector,
    pending: dict[str, list[_Expect]],
    tally: _Tally,
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
    served = _Served(stored.name, stored.version, offload_shape(model), len(model.spec.sections))
    cases = live_cases(messages, seed)

    db = ModelDB([run_dir])
    tally = _Tally()
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
            pending: dict[str, list[_Expect]] = {}
            for i in range(lo, min(lo + chunk, len(cases))):
                topic, payload = _build(cases[i], i, i + 1, served)
                address, expect = _expectation(i, cases[i], topic, payload, seen)
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


def bench_fuzz(
    examples: int,
    run_dir: str | None = None,
    live: int | None = None,
    seed: int | None = None,
    progress: bool = False,
    *,
    mqtt_client: str | None = None,
) -> dict[str, Any]:
    """Every decoder property with `examples` inputs, then (with a model) the live server: on
    an in-memory hub, or through a real broker with `mqtt_client`."""
    if examples < 1:
        raise DdnnError("--examples must be at least 1")
    properties = [run_property(name, examples, seed, progress) for name in PROPERTIES]
    live_result = None
    if run_dir is not None:
        messages = examples if live is None else live
        live_result = live_fuzz(run_dir, messages, seed, progress, mqtt_client=mqtt_client)
    bad = sum(p["escaped"] + p["violations"] for p in properties)
    if live_result is not None:
        bad += sum(live_result[k] for k in LIVE_FAILURES) + (not live_result["server_healthy"])
    return {
        "examples": examples,
        "seed": seed,
        "properties": properties,
        "live": live_result,
        "mqtt_client": mqtt_client,
        "ok": bad == 0,
    }


def bench_fuzz_text(r: dict[str, Any]) -> str:
    """Markdown tables: the decoder properties, then the live server."""
    lines = [
        f"decoder properties, up to {r['examples']} generated inputs each"
        + (f" (seed {r['seed']})" if r["seed"] is not None else ""),
        "",
        "| property | frames tried | rejected (FrameError) | accepted | exceptions escaped | "
        "broken round trips | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r["properties"]:
        lines.append(
            f"| {p['property']} | {p['tried']} | {p['rejected']} | {p['accepted']} | "
            f"{p['escaped']} | {p['violations']} | {p['seconds']:.0f} |"
        )
    lv = r["live"]
    if lv is None:
        lines += ["", "live server: skipped (give a RUN_DIR to fuzz a real InferenceServer)"]
    else:
        cats = ", ".join(f"{k} {v}" for k, v in lv["by_category"].items())
        codes = ", ".join(f"{k} {v}" for k, v in sorted(lv["codes"].items()))
        where = f"Mosquitto via {r['mqtt_client']}" if r.get("mqtt_client") else "memory://"
        lines += [
            "",
            f"live InferenceServer on {where} ({cats}); {lv['seconds']:.0f} s",
            "",
            "| messages tried | rejected with an error frame | accepted (valid) | no reply address "
            "| duplicates dropped | unanswered | malformed accepted | exceptions escaped | "
            "valid requests answered after |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {lv['tried']} | {lv['rejected']} | {lv['accepted']} | {lv['unanswerable']} | "
            f"{lv['duplicates_dropped']} | {lv['unanswered']} | {lv['accepted_malformed']} | "
            f"{lv['escaped'] + lv['internal_errors']} | "
            f"{lv['probes_ok']} / {lv['probes_ok'] + lv['probes_failed']} |",
            "",
            f"error codes: {codes}; server healthy at the end: {lv['server_healthy']}",
        ]
        if lv["wrong_codes"] or lv["unexpected_answers"]:
            lines.append(
                f"wrong codes {lv['wrong_codes']}, unexpected answers {lv['unexpected_answers']}"
            )
    failures = [f for p in r["properties"] for f in p["failures"]]
    failures += lv["failures"] if lv else []
    for f in failures[:10]:
        lines.append(f"FAILED {f['kind']}: {f['error']} on {f['input'][:120]}")
    lines += ["", "result: " + ("ok" if r["ok"] else "FAILED")]
    return "\n".join(lines)
