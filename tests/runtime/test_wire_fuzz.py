"""Property tests: decode_frame raises FrameError and nothing else, whatever the bytes. The
strategies and checks live in ddnn.bench.fuzz, shared with the longer `ddnn bench fuzz`."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from ddnn.bench.fuzz import (
    check_round_trip,
    decode_or_frame_error,
    frames,
    headed_bytes,
    mutated_frames,
    random_bytes,
)
from ddnn.runtime.wire import Frame

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
