"""Property tests: decode_frame raises FrameError and nothing else, whatever the bytes. The
strategies and checks live in ddnn.bench.fuzz, shared with the longer `ddnn bench fuzz`."""

from __future__ import annotations

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
from ddnn.bench.fuzz.strategies import mutate, mutation_lists, requests
from ddnn.runtime.codec import _read_request_fast
from ddnn.runtime.wire import Frame, decode_frame, encode_frame

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


def _fast_agrees(data: bytes) -> Frame | None:
    """The request fast path accepts only what the checked reader accepts, as the same frame
    (a bytearray always takes the checked reader)."""
    fast = _read_request_fast(data)
    if fast is not None:
        assert decode_frame(bytearray(data)) == fast
    return fast


@FUZZ
@given(requests.map(encode_frame))
def test_request_fast_path_takes_every_valid_request(data: bytes) -> None:
    assert _fast_agrees(data) is not None


@settings(FUZZ, max_examples=500)
@given(st.builds(mutate, requests.map(encode_frame), mutation_lists))
def test_request_fast_path_declines_what_the_checked_reader_refuses(data: bytes) -> None:
    _fast_agrees(data)
