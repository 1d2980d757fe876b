"""Property tests: decode_frame raises FrameError and nothing else, whatever the bytes. The
strategies and checks live in ddnn.bench.fuzz, shared with the longer `ddnn bench fuzz`."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddnn.bench.fuzz import (
    check_round_trip,
    decode_or_frame_error,
    frames,
    headed_bytes,
    mutated_frames,
    random_bytes,
)
from ddnn.bench.fuzz.strategies import finite32, mutate, mutation_lists, requests, u64
from ddnn.runtime.codec import _read_answer_fast, _read_request_fast
from ddnn.runtime.wire import Frame, FrameError, decode_frame, encode_answer, encode_frame

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep the repo free of .hypothesis/
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(frames)
def test_valid_frames_round_trip(frame: Frame) -> None:
    check_round_trip(frame)


@FUZZ
@given(random_bytes)
def test_random_bytes(data: bytes) -> None:
    decode_or_frame_error(data)


@FUZZ
@given(headed_bytes)
def test_random_bytes_behind_a_valid_header(data: bytes) -> None:
    decode_or_frame_error(data)


@settings(FUZZ, max_examples=500)
@given(mutated_frames)
def test_mutated_valid_frames(data: bytes) -> None:
    decode_or_frame_error(data)


def _same_as_checked_reader(data: bytes) -> Frame | None:
    """bytes may take a fast path (requests, answers); a bytearray always takes the checked
    reader: both give the same frame, or the same error."""
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        with pytest.raises(FrameError) as checked:
            decode_frame(bytearray(data))
        assert str(checked.value) == str(exc)
        return None
    assert decode_frame(bytearray(data)) == frame
    return frame


@FUZZ
@given(requests.map(encode_frame))
def test_request_fast_path_takes_every_valid_request(data: bytes) -> None:
    assert _read_request_fast(data) == _same_as_checked_reader(data)


answers = st.builds(  # a server's answer: predicted, exit, entropy, queue_ms, compute_ms
    encode_answer, u64, st.integers(-(2**31), 2**31 - 1), st.integers(0, 255), finite32,
    finite32, finite32,
)  # fmt: skip


@FUZZ
@given(answers)
def test_answer_fast_path_takes_every_answer(data: bytes) -> None:
    assert _read_answer_fast(data) == _same_as_checked_reader(data)


@settings(FUZZ, max_examples=500)
@given(st.builds(mutate, st.one_of(frames.map(encode_frame), answers), mutation_lists))
def test_fast_paths_accept_and_refuse_as_the_checked_reader(data: bytes) -> None:
    _same_as_checked_reader(data)
