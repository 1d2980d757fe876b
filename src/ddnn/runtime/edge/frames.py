"""The edge's frame table: what each device reported for a frame, the frame's phase, its deadline.

Pure state: no threads, no transport, no torch. Every transition takes the time (the edge passes
`time.perf_counter()`, tests a simulated clock) and returns the actions the caller carries out:
fuse these scores, ask these devices for their features, run the upper sections, answer these
requests. The results of that compute come back through `fused` and `settle`. One thread owns a
table; the caller answers a `Fuse` with `fused` before it reports anything else.

A frame's life (section 1; section 0 skips the fusion and the features):

    COLLECTING_SCORES --all devices, or the deadline--> FUSING --confident--> ANSWERED
    FUSING --unsure, features missing--> AWAITING_FEATURES --all came, or the deadline--> DISPATCHED
    FUSING --unsure, features sent with the scores--> DISPATCHED --settle--> ANSWERED

A report for a frame past collection is late: it waits for the answer, or gets it at once. Within
`late_window` of the frame's first report only: after that the id is a new frame (devices that
restart number their frames from 0 again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from ddnn.runtime.checks import BadInput, RequestError
from ddnn.runtime.wire import Reply, Request, Status

if TYPE_CHECKING:  # only the type: the table must not import torch
    from ddnn.runtime.executor import Answer

Key = tuple[int, int]  # (section, frame id)
Report = tuple[Request, float]  # a device's request and when it arrived


class Phase(Enum):
    COLLECTING_SCORES = "collecting scores"  # until every device reported, or the deadline
    FUSING = "fusing"  # scores closed: the caller decides on the fused local exit (`fused`)
    AWAITING_FEATURES = "awaiting features"  # unsure: devices asked for 'x', until the deadline
    DISPATCHED = "dispatched"  # upper sections running or forwarded: late reports wait
    ANSWERED = "answered"  # the outcome is known: a late report gets it at once


@dataclass(frozen=True)
class Outcome:
    """How a frame was answered."""

    answer: Answer | None  # None: nothing to answer with (server-only, the upstream failed)
    done: float  # when the edge's own part ended: compute time is done - frame.started
    degraded: bool = False  # answered from an earlier exit than planned
    upstream: Reply | None = None  # the server's reply: its queue and compute times add up
    error: str = ""  # why there is no answer (the devices get a TIMEOUT error)


@dataclass(eq=False)
class Frame:
    section: int  # 1: device+server (scores, then features), 0: server-only (raw views)
    frame_id: int
    opened: float  # arrival of its first report
    phase: Phase = Phase.COLLECTING_SCORES
    # index -> the device's latest report: replies answer the latest request
    requests: dict[int, Report] = field(default_factory=dict)
    started: float = 0.0  # when the edge began on it: scores closed, or features in
    fused: Answer | None = None  # the fused local exit's answer, once decided
    asked: set[int] = field(default_factory=set)  # devices asked for features, not yet sent
    asked_at: float = 0.0
    missing: tuple[str, ...] = ()  # devices left out, named in the replies
    late: list[Report] = field(default_factory=list)  # late reports waiting for the outcome
    outcome: Outcome | None = None

    @property
    def key(self) -> Key:
        return (self.section, self.frame_id)

    @property
    def local(self) -> int:
        """The fused local exit's prediction, reported to the devices (-1: none, server-only)."""
        return self.fused.predicted if self.fused is not None else -1

    @property
    def status(self) -> Status:
        """The status of its (not late) replies: DEGRADED when a device or an exit was missed."""
        assert self.outcome is not None
        return Status.DEGRADED if self.outcome.degraded or self.missing else Status.OK

    def waits_since(self) -> float | None:
        """Start of the current wait (its deadline is `deadline` later); None: no wait."""
        if self.phase is Phase.COLLECTING_SCORES:
            return self.opened
        if self.phase is Phase.AWAITING_FEATURES:
            return self.asked_at
        return None


@dataclass(frozen=True)
class Reject:
    """Answer `request` with an error; the frame is unchanged."""

    request: Request
    error: RequestError


@dataclass(frozen=True)
class Fuse:
    """Decide on the fused scores of the devices present, then call `FrameTable.fused`."""

    frame: Frame
    timed_out: bool = False  # closed by the deadline, not by the last device


@dataclass(frozen=True)
class AskFeatures:
    """Reply FEATURES to these reports: the fused exit is unsure."""

    frame: Frame
    asks: tuple[Report, ...]


@dataclass(frozen=True)
class Escalate:
    """Run the upper sections on the frame's features (or forward its raw views), then call
    `FrameTable.settle`."""

    frame: Frame
    timed_out: Phase | None = None  # the wait the deadline ended, if any


@dataclass(frozen=True)
class Respond:
    """Reply the frame's outcome to these reports (`late`: their data was not used)."""

    frame: Frame
    to: tuple[Report, ...]
    late: bool = False


@dataclass(frozen=True)
class Late:
    """A report after its frame's scores were closed: counted; a `Respond(late=True)` answers
    it, at once when the frame is answered, else when it is settled."""

    request: Request


Action = Reject | Fuse | AskFeatures | Escalate | Respond | Late


def _names(request: Request) -> set[str]:
    return {t.name for t in request.tensors}


class FrameTable:
    """Frames by (section, frame id): the open ones (with a deadline) and the newest `keep`
    closed ones (for late reports)."""

    def __init__(
        self, devices: Sequence[str], *, deadline: float, late_window: float, keep: int = 4096
    ) -> None:
        self.devices = tuple(devices)
        self.index = {d: i for i, d in enumerate(self.devices)}
        self.deadline = deadline
        self.late_window = late_window
        self.keep = keep
        self._open: dict[Key, Frame] = {}  # COLLECTING_SCORES, AWAITING_FEATURES
        self._closed: OrderedDict[Key, Frame] = OrderedDict()  # DISPATCHED, ANSWERED

    def get(self, key: Key) -> Frame | None:
        return self._open.get(key) or self._closed.get(key)

    def next_deadline(self) -> float | None:
        """The earliest deadline of an open frame (None: nothing waits)."""
        starts = [s for f in self._open.values() if (s := f.waits_since()) is not None]
        return min(starts) + self.deadline if starts else None

    def report(self, request: Request, arrived: float, now: float) -> list[Action]:
        """A device's (checked) request for a frame, which arrived at `arrived`."""
        key, index = (request.section, request.frame_id), self.index[request.device_id]
        frame = self._open.get(key)
        if frame is not None and frame.phase is Phase.AWAITING_FEATURES:
            return self._features(frame, index, request, arrived, now)
        done = self._closed.get(key)
        if done is not None and arrived - done.opened <= self.late_window:
            return self._late(done, request, arrived)
        if done is not None:  # long after: devices that restarted their frame ids, a new event
            del self._closed[key]
        if request.section == 1 and "scores" not in _names(request):
            message = (
                f"features for frame {request.frame_id}, which this edge did not ask for: send "
                "the exit scores first"
            )
            return [Reject(request, BadInput(message))]
        if frame is None:
            frame = self._open[key] = Frame(request.section, request.frame_id, arrived)
        frame.requests[index] = (request, arrived)
        if len(frame.requests) == len(self.devices):
            return [self._close_scores(frame, now, timed_out=False)]
        return []

    def expire(self, now: float) -> list[Action]:
        """Close the waits whose deadline passed: fuse without the devices that did not report,
        go on without the features that did not come (those devices are named missing)."""
        frames = list(self._open.values())
        actions: list[Action] = [
            self._close_scores(f, now, timed_out=True)
            for f in frames
            if f.phase is Phase.COLLECTING_SCORES and now - f.opened >= self.deadline
        ]
        for frame in frames:
            if frame.phase is Phase.AWAITING_FEATURES and now - frame.asked_at >= self.deadline:
                del self._open[frame.key]
                for i in frame.asked:
                    del frame.requests[i]  # already answered (FEATURES); a late report catches up
                frame.missing += tuple(self.devices[i] for i in sorted(frame.asked))
                frame.asked = set()
                actions.append(self._escalate(frame, now, Phase.AWAITING_FEATURES))
        return actions

    def fused(self, frame: Frame, answer: Answer, now: float) -> list[Action]:
        """The fused local exit decided (at `now`): answer, ask for features, or go up."""
        assert frame.phase is Phase.FUSING, frame.phase
        frame.fused = answer
        if answer.confident:
            self._dispatch(frame)
            return self.settle(frame, Outcome(answer, now))
        frame.asked = {i for i, (r, _) in frame.requests.items() if "x" not in _names(r)}
        if not frame.asked:  # the features came with the scores
            self._dispatch(frame)
            return [Escalate(frame)]
        frame.phase, frame.asked_at = Phase.AWAITING_FEATURES, now
        self._open[frame.key] = frame
        return [AskFeatures(frame, tuple(frame.requests[i] for i in sorted(frame.asked)))]

    def settle(self, frame: Frame, outcome: Outcome) -> list[Action]:
        """The frame's outcome is known: reply it to its reports and to the late ones waiting."""
        frame.outcome, frame.phase = outcome, Phase.ANSWERED
        waiting, frame.late = frame.late, []
        actions: list[Action] = [Respond(frame, tuple(frame.requests.values()))]
        if waiting:
            actions.append(Respond(frame, tuple(waiting), late=True))
        return actions

    # -- transitions ---------------------------------------------------------------------------

    def _close_scores(self, frame: Frame, now: float, *, timed_out: bool) -> Action:
        del self._open[frame.key]
        frame.started = now
        frame.missing = tuple(d for i, d in enumerate(self.devices) if i not in frame.requests)
        if frame.section == 0:  # server-only: every raw view goes up, fused there
            self._dispatch(frame)
            return Escalate(frame, Phase.COLLECTING_SCORES if timed_out else None)
        frame.phase = Phase.FUSING
        return Fuse(frame, timed_out)

    def _features(
        self, frame: Frame, index: int, request: Request, arrived: float, now: float
    ) -> list[Action]:
        if index not in frame.requests:  # reported after the scores were fused: catches up
            return self._late(frame, request, arrived)
        if index not in frame.asked or "x" not in _names(request):
            who = ", ".join(self.devices[i] for i in sorted(frame.asked))
            message = f"frame {request.frame_id} waits for features ('x') from {who}"
            return [Reject(request, BadInput(message))]
        frame.requests[index] = (request, arrived)
        frame.asked.discard(index)
        if frame.asked:
            return []
        del self._open[frame.key]
        return [self._escalate(frame, now, None)]

    def _escalate(self, frame: Frame, now: float, timed_out: Phase | None) -> Action:
        """The features are in (or their deadline passed): on to the upper sections."""
        frame.started = now
        self._dispatch(frame)
        return Escalate(frame, timed_out)

    def _dispatch(self, frame: Frame) -> None:
        frame.phase = Phase.DISPATCHED
        self._closed[frame.key] = frame
        if len(self._closed) > self.keep:
            self._closed.popitem(last=False)

    def _late(self, frame: Frame, request: Request, arrived: float) -> list[Action]:
        if frame.phase is Phase.ANSWERED:
            return [Late(request), Respond(frame, ((request, arrived),), late=True)]
        frame.late.append((request, arrived))
        return [Late(request)]
