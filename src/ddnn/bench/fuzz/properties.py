"""The decoder's properties and a runner that counts failures instead of raising them, so a
long `ddnn bench fuzz` run reports every one."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from ddnn.bench.fuzz.strategies import frames, headed_bytes, mutated_frames, random_bytes
from ddnn.runtime.wire import (
    ErrorFrame,
    Frame,
    FrameError,
    decode_frame,
    decode_tensor,
    encode_frame,
)


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


def drive(strategy: Any, body: Callable[[Any], None], examples: int, seed: int | None) -> None:
    """Call `body` on up to `examples` values hypothesis draws from `strategy`."""

    def run(value: Any) -> None:  # a plain function: hypothesis inspects its signature
        body(value)

    test = _settings(examples)(given(strategy)(run))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    test()


@dataclass
class Tally:
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
    tally = Tally()
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
        drive(strategy, body, examples, seed)
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
