"""Property tests: decode_frame raises FrameError and nothing else, whatever the bytes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep the repo free of .hypothesis/
    suppress_health_check=[HealthCheck.too_slow],
)

ALNUM = "abcXYZ019"
ids = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(ALNUM + "._-", max_size=11))
u64 = st.integers(1, 2**64 - 1)
finite32 = st.floats(-1e6, 1e6, width=32)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
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


def decode_or_frame_error(data: bytes) -> Frame | None:
    """The contract: a frame, or FrameError; any other exception fails the test."""
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


@FUZZ
@given(frames)
def test_valid_frames_round_trip(frame: Frame) -> None:
    data = encode_frame(frame)
    assert decode_frame(data) == frame
    assert decode_frame(bytearray(data)) == frame
    assert decode_frame(memoryview(data)) == frame


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    decode_or_frame_error(data)


@FUZZ
@given(st.sampled_from([1, 2, 3, 4]), st.binary(max_size=300))
def test_random_bytes_behind_a_valid_header(kind: int, body: bytes) -> None:
    decode_or_frame_error(MAGIC + bytes([VERSION, kind]) + body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_frame(draw(frames)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate"]))
        if action == "set" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[where:]
    return bytes(data)


@settings(FUZZ, max_examples=500)
@given(mutated())
def test_mutated_valid_frames(data: bytes) -> None:
    decode_or_frame_error(data)
