"""Fuzzing the wire format: one definition of the hypothesis strategies and properties, used by
tests/runtime/test_wire_fuzz.py (a few hundred examples) and by `ddnn bench fuzz` (many more),
plus a live part: a real `InferenceServer` fed fuzzed and mutated messages.

The contract checked: `decode_frame` raises `FrameError` and nothing else, whatever the bytes;
whatever a server receives on a request topic, it answers with an error frame when a reply
address can be read (the request's device, else the topic's), never stops, and still answers the
next valid request.

hypothesis is a dev dependency, so this package is imported only by the test and the bench.
Modules: strategies (what is generated), properties (the decoder's contract and its runner),
cases (the live messages and their expected answers), live (the live server run), report
(`bench_fuzz` and its tables).
"""

from __future__ import annotations

from ddnn.errors import DdnnError

try:
    import hypothesis  # noqa: F401 - checked here, before any module below needs it
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise DdnnError(
        "fuzzing needs hypothesis, a development dependency: pip install -e .[dev]"
    ) from exc

from ddnn.bench.fuzz.properties import PROPERTIES, check_round_trip, decode_or_frame_error
from ddnn.bench.fuzz.report import bench_fuzz, bench_fuzz_text
from ddnn.bench.fuzz.strategies import frames, headed_bytes, mutated_frames, random_bytes

__all__ = [
    "PROPERTIES",
    "bench_fuzz",
    "bench_fuzz_text",
    "check_round_trip",
    "decode_or_frame_error",
    "frames",
    "headed_bytes",
    "mutated_frames",
    "random_bytes",
]
