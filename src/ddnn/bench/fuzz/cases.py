"""The live part's messages: fuzz cases drawn per category, built into (topic, payload) at
send time, and what the protocol says must come back for each."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from hypothesis import strategies as st

from ddnn.bench.fuzz.properties import drive
from ddnn.bench.fuzz.strategies import (
    Mutation,
    frames,
    mutate,
    mutation_lists,
    random_bytes,
    tensors,
)
from ddnn.errors import DdnnError
from ddnn.runtime.protocol import parse_request_topic, request_topic, requests_root
from ddnn.runtime.replies import readable_request_id
from ddnn.runtime.wire import (
    ErrorFrame,
    Frame,
    FrameError,
    Reply,
    Request,
    Tensor,
    decode_frame,
    encode_frame,
)

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
            drive(_CASES[category], cases.append, count, seed)
        per_category.append(cases)
    return [c for turn in itertools.zip_longest(*per_category) for c in turn if c is not None]


@dataclass
class Expect:
    """What must come back to `address` for one message."""

    index: int
    category: str
    request_id: int | None  # the id the answer must carry (None: the request was unreadable)
    must_error: bool  # malformed for this server: only an ErrorFrame is a correct answer
    optional: bool = False  # a re-delivered (device, request id): the server may drop it
    answer: Reply | ErrorFrame | None = None


@dataclass
class Served:
    name: str
    version: int
    shape: tuple[int, ...]
    sections: int


def build(case: LiveCase, i: int, rid: int, m: Served) -> tuple[str, bytes]:
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


def expectation(
    i: int, case: LiveCase, topic: str, payload: bytes, seen: set[tuple[str, int]]
) -> tuple[str | None, Expect]:
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
        return address, Expect(i, case.category, frame.request_id, not matches, optional)
    return address, Expect(i, case.category, readable_request_id(payload), True)
