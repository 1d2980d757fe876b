"""Hardening (issue 15): replies go to the topic's owner, abuse costs nothing lasting, and the
answers docs/protocol.md promises for odd requests (unserved sections, undecodable frames whose
id is readable, NaN inputs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ddnn.runtime.checks import BadInput, check_size, request_limit, server_inputs
from ddnn.runtime.config import ServerConfig
from ddnn.runtime.edge import EdgeAggregator
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import EDGE_PREFIX
from ddnn.runtime.ratelog import RateLimitedLog
from ddnn.runtime.server import InferenceServer, ModelDB
from ddnn.runtime.transport import Transport, create_transport
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Request,
    Status,
    decode_frame,
    encode_frame,
    encode_tensor,
    reply_topic,
    request_topic,
)
from ddnn.store.artifact import read_spec, read_spec_doc


def raw_request(run: Path, device: str, rid: int, **changes: object) -> Request:
    """A server-only request (section 0, the raw view as unit8) from `device`."""
    spec, doc = read_spec(run), read_spec_doc(run)
    x = encode_tensor(np.zeros((1, *spec.view_shape), np.float32), Encoding.UNIT8, name="x")
    fields: dict[str, object] = dict(
        request_id=rid, model=str(doc["name"]), model_version=int(doc["version"]),
        device_id=device, frame_id=rid, section=0, tensors=(x,),
    )  # fmt: skip
    fields.update(changes)
    return Request(**fields)  # type: ignore[arg-type]


@pytest.fixture
def hub(hub_name: str) -> Iterator[list[Transport]]:
    """Three in-memory transports on one hub: a tier's, cam0's and cam1's."""
    transports = [create_transport(f"memory://{hub_name}") for _ in range(3)]
    yield transports
    for t in transports:
        t.close()


@pytest.fixture
def server(tiny_ddnn: Path, hub: list[Transport]) -> Iterator[InferenceServer]:
    running = InferenceServer(hub[0], ModelDB([tiny_ddnn]), ServerConfig(workers=1)).start()
    yield running
    running.close()


def answer_of(inbox, transport: Transport, topic: str, payload: bytes):
    transport.publish(topic, payload)
    got_topic, got = inbox.get(5.0)
    return got_topic, decode_frame(got)


# -- 1. replies go to the device that owns the request's topic ---------------------------------


def test_an_error_goes_to_the_owner_of_the_topic_not_the_device_named_inside(
    tiny_ddnn, hub, server, make_inbox
):
    """cam0 publishes on its own topic a request naming cam1, with the id cam1 waits on: the
    MALFORMED error goes back to cam0, and cam1 hears nothing."""
    cam0, cam1 = make_inbox(), make_inbox()
    hub[1].subscribe(reply_topic("cam0"), cam0)
    hub[2].subscribe(reply_topic("cam1"), cam1)
    forged = raw_request(tiny_ddnn, "cam1", 4242)
    topic, frame = answer_of(
        cam0, hub[1], request_topic(forged.model, 0, "cam0"), encode_frame(forged)
    )
    assert topic == reply_topic("cam0")
    assert frame == ErrorFrame(4242, Status.MALFORMED, frame.message)
    cam1.assert_empty(0.3)


def test_the_edge_answers_the_owner_of_the_topic_too(tiny_multiview, hub, make_inbox):
    edge = EdgeAggregator(hub[0], tiny_multiview).start()
    cam0, dev1 = make_inbox(), make_inbox()
    hub[1].subscribe(reply_topic("dev0"), cam0)
    hub[2].subscribe(reply_topic("dev1"), dev1)
    try:
        forged = raw_request(tiny_multiview, "dev1", 4242, section=1)
        topic = request_topic(forged.model, 1, "dev0", prefix=EDGE_PREFIX)
        got_topic, frame = answer_of(cam0, hub[1], topic, encode_frame(forged))
    finally:
        edge.close()
    assert got_topic == reply_topic("dev0")
    assert isinstance(frame, ErrorFrame) and frame.request_id == 4242
    assert frame.code is Status.MALFORMED
    dev1.assert_empty(0.3)


# -- 3. odd requests get the answers docs/protocol.md promises ---------------------------------


def test_an_unserved_section_or_version_is_an_unknown_model(tiny_ddnn, hub, server, inbox):
    hub[1].subscribe(reply_topic("cam0"), inbox)
    for rid, changes in ((5, {"section": 9}), (6, {"model_version": 999})):
        request = raw_request(tiny_ddnn, "cam0", rid, **changes)
        topic = request_topic(request.model, request.section, "cam0")
        _, frame = answer_of(inbox, hub[1], topic, encode_frame(request))
        assert isinstance(frame, ErrorFrame), frame
        assert (frame.request_id, frame.code) == (rid, Status.UNKNOWN_MODEL)


def test_an_undecodable_request_is_answered_with_its_id(tiny_ddnn, hub, server, inbox):
    hub[1].subscribe(reply_topic("cam0"), inbox)
    request = raw_request(tiny_ddnn, "cam0", 77)
    topic = request_topic(request.model, 0, "cam0")
    _, frame = answer_of(inbox, hub[1], topic, encode_frame(request)[:-3])  # truncated
    assert (frame.request_id, frame.code) == (77, Status.MALFORMED)
    _, frame = answer_of(inbox, hub[1], topic, b"garbage")
    assert (frame.request_id, frame.code) == (None, Status.MALFORMED)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_inputs_are_bad_input(tiny_ddnn, hub, server, inbox, bad):
    spec = read_spec(tiny_ddnn)
    view = np.zeros((1, *spec.view_shape), np.float32)
    view.flat[3] = bad
    x = encode_tensor(view, Encoding.FLOAT32, name="x")
    hub[1].subscribe(reply_topic("cam0"), inbox)
    request = raw_request(tiny_ddnn, "cam0", 9, tensors=(x,))
    _, frame = answer_of(
        inbox, hub[1], request_topic(request.model, 0, "cam0"), encode_frame(request)
    )
    assert isinstance(frame, ErrorFrame) and frame.code is Status.BAD_INPUT
    assert "NaN or infinite" in frame.message


# -- 2. abuse costs nothing lasting ------------------------------------------------------------


def test_declared_shapes_are_checked_before_anything_is_decoded(monkeypatch):
    import ddnn.runtime.checks as checks

    monkeypatch.setattr(checks, "decode_tensor", lambda t: pytest.fail("decoded"))
    big = encode_tensor(np.zeros((1, 3, 64, 64), np.float32), Encoding.UNIT8, name="x")
    request = Request(1, "m", 1, "cam0", 1, 0, (big,))
    with pytest.raises(BadInput, match="expects"):
        server_inputs(request, (1, 3, 32, 32))
    limit = request_limit([(1, 3, 32, 32), (1, 16, 7, 7)])
    widest = (
        encode_tensor(np.zeros((1, 3, 32, 32), np.float32), name="x"),
        encode_tensor(np.ones(1, np.float32), name="present"),
    )  # the largest valid request, with the longest names, fits
    assert len(encode_frame(Request(1, "m" * 64, 1, "d" * 64, 1, 0, widest))) <= limit
    big = encode_tensor(np.zeros((1, 3, 64, 64), np.float32), name="x")
    assert len(encode_frame(Request(1, "m", 1, "d", 1, 0, (big,)))) > limit
    check_size(b"x" * limit, limit)
    with pytest.raises(BadInput, match="the largest accepted"):
        check_size(b"x" * (limit + 1), limit)


def test_too_large_a_request_is_refused_with_its_id(tiny_ddnn, hub, server, inbox):
    spec = read_spec(tiny_ddnn)
    huge = encode_tensor(np.zeros((1, 3, 200, 200), np.float32), name="x")
    request = raw_request(tiny_ddnn, "cam0", 12, tensors=(huge,))
    hub[1].subscribe(reply_topic("cam0"), inbox)
    _, frame = answer_of(
        inbox, hub[1], request_topic(request.model, 0, "cam0"), encode_frame(request)
    )
    assert (frame.request_id, frame.code) == (12, Status.BAD_INPUT)
    assert "largest accepted" in frame.message, spec


def test_repeated_warnings_are_rate_limited_and_counted(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), burst=3, interval_s=10.0,
                             clock=lambda: now[0])  # fmt: skip
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(100):
            limited.warning("malformed", "bad message %d", i, metrics=metrics)
        limited.warning("overloaded", "shed")
        now[0] = 11.0
        limited.warning("malformed", "bad message again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["bad message 0", "bad message 1", "bad message 2"]
    assert lines[3:] == [
        "shed",
        "97 more 'malformed' warnings in the last 10 s were not logged",
        "bad message again",
    ]
    assert metrics.counter("log_suppressed_total", key="malformed") == 97
