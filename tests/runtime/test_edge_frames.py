"""The edge's frame table on a simulated clock: no broker, no threads, no model."""

from __future__ import annotations

import numpy as np
import pytest

from ddnn.runtime.checks import BadInput
from ddnn.runtime.edge.compute import answer, ask_features
from ddnn.runtime.edge.frames import (
    AskFeatures,
    Escalate,
    FrameTable,
    Fuse,
    Late,
    Outcome,
    Phase,
    Reject,
    Respond,
)
from ddnn.runtime.executor import Answer
from ddnn.runtime.wire import Encoding, Reply, Request, Status, encode_tensor

DEVICES = ("dev0", "dev1", "dev2")
DEADLINE = 0.2
SURE = Answer(3, 0, 0.1, True)
UNSURE = Answer(3, 0, 0.9, False)


def table() -> FrameTable:
    return FrameTable(DEVICES, deadline=DEADLINE, late_window=1.0)


def report(device: int, frame: int = 7, *, scores: bool = True, x: bool = False, rid: int = 0):
    tensors = []
    if scores:
        tensors.append(encode_tensor(np.zeros(4, np.float32), Encoding.FLOAT32, name="scores"))
    if x:
        tensors.append(encode_tensor(np.ones((1, 2)), Encoding.FLOAT32, name="x"))
    request_id = rid or 100 * frame + device + 1
    return Request(request_id, "m", 1, DEVICES[device], frame, 1, tuple(tensors))


def only(actions, kind):
    (action,) = actions
    assert isinstance(action, kind), actions
    return action


def test_a_frame_closes_when_every_device_reported_and_a_sure_exit_answers_them_all():
    t = table()
    assert t.report(report(0), 0.00, 0.00) == [] and t.report(report(1), 0.01, 0.01) == []
    fuse = only(t.report(report(2), 0.02, 0.03), Fuse)
    frame = fuse.frame
    assert not fuse.timed_out and frame.phase is Phase.FUSING and frame.missing == ()
    respond = only(t.fused(frame, SURE, 0.05), Respond)
    assert frame.phase is Phase.ANSWERED and frame.status is Status.OK and not respond.late
    assert [r.device_id for r, _ in respond.to] == list(DEVICES)
    reply = answer(frame, *respond.to[0], late=False)
    assert reply.status is Status.OK and reply.predicted == 3 and reply.exit_index == 0
    assert reply.queue_ms == pytest.approx(30.0) and reply.compute_ms == pytest.approx(20.0)
    assert t.next_deadline() is None and t.expire(10.0) == []


def test_the_deadline_with_a_device_missing_gives_a_degraded_answer_naming_it():
    t = table()
    t.report(report(0), 1.00, 1.00)
    t.report(report(2), 1.05, 1.05)
    assert t.next_deadline() == pytest.approx(1.0 + DEADLINE)
    assert t.expire(1.0 + DEADLINE - 0.001) == []
    fuse = only(t.expire(1.25), Fuse)
    assert fuse.timed_out and fuse.frame.missing == ("dev1",)
    respond = only(t.fused(fuse.frame, SURE, 1.21), Respond)
    replies = [answer(respond.frame, r, a, late=False) for r, a in respond.to]
    assert [r.request_id for r in replies] == [701, 703]
    assert all(r.status is Status.DEGRADED and r.missing_devices == ("dev1",) for r in replies)


def test_an_unsure_fused_exit_asks_for_features_and_goes_up_when_they_came():
    t = table()
    for d in range(2):
        t.report(report(d), 0.0, 0.0)
    fuse = only(t.report(report(2, x=True), 0.0, 0.01), Fuse)  # dev2 sent x with its scores
    ask = only(t.fused(fuse.frame, UNSURE, 0.02), AskFeatures)
    assert ask.frame.phase is Phase.AWAITING_FEATURES
    assert [r.device_id for r, _ in ask.asks] == ["dev0", "dev1"]
    reply = ask_features(ask.frame, *ask.asks[0])
    assert reply.status is Status.FEATURES and reply.predicted == UNSURE.predicted
    assert t.next_deadline() == pytest.approx(0.02 + DEADLINE)
    assert t.report(report(0, scores=False, x=True, rid=11), 0.05, 0.05) == []
    escalate = only(t.report(report(1, scores=False, x=True, rid=12), 0.06, 0.06), Escalate)
    frame = escalate.frame
    assert frame.phase is Phase.DISPATCHED and escalate.timed_out is None
    assert frame.started == 0.06 and frame.missing == ()
    assert [r.request_id for r, _ in frame.requests.values()] == [11, 12, 703]
    upstream = Reply(9, Status.OK, 5, 1, 0.2, 1.0, 2.0)
    respond = only(
        t.settle(frame, Outcome(Answer(5, 1, 0.2, True), 0.07, upstream=upstream)), Respond
    )
    reply = answer(frame, *respond.to[0], late=False)
    assert reply.status is Status.OK and reply.predicted == 5 and reply.exit_index == 1
    assert reply.queue_ms == pytest.approx(10.0 + 1.0) and reply.compute_ms == pytest.approx(12.0)


def test_features_that_never_come_are_left_out_when_the_deadline_passes():
    t = table()
    for d in range(3):
        actions = t.report(report(d), 0.0, 0.0)
    ask = only(t.fused(actions[0].frame, UNSURE, 0.0), AskFeatures)
    t.report(report(1, scores=False, x=True, rid=12), 0.1, 0.1)
    escalate = only(t.expire(DEADLINE), Escalate)
    assert escalate.frame is ask.frame and escalate.timed_out is Phase.AWAITING_FEATURES
    assert escalate.frame.missing == ("dev0", "dev2")
    assert [r.request_id for r, _ in escalate.frame.requests.values()] == [12]


def test_features_not_asked_for_are_rejected():
    t = table()
    reject = only(t.report(report(0, scores=False, x=True), 0.0, 0.0), Reject)
    assert isinstance(reject.error, BadInput) and reject.error.status is Status.BAD_INPUT
    for d in range(3):
        actions = t.report(report(d, x=d == 2), 0.0, 0.0)
    t.fused(actions[0].frame, UNSURE, 0.0)
    reject = only(t.report(report(2, scores=False, x=True, rid=5), 0.01, 0.01), Reject)
    assert "waits for features ('x') from dev0, dev1" in str(reject.error)


def test_a_late_report_for_an_answered_frame_gets_its_answer_at_once_degraded():
    t = table()
    t.report(report(0), 0.0, 0.0)
    t.report(report(1), 0.0, 0.0)
    fuse = only(t.expire(DEADLINE), Fuse)
    t.fused(fuse.frame, SURE, DEADLINE)
    late, respond = t.report(report(2), 0.5, 0.5)
    assert isinstance(late, Late) and isinstance(respond, Respond) and respond.late
    reply = answer(respond.frame, *respond.to[0], late=True)
    assert reply.status is Status.DEGRADED and reply.missing_devices == ("dev2",)
    assert reply.queue_ms == 0.0 and reply.compute_ms == 0.0 and reply.predicted == 3


def test_a_late_report_while_the_frame_is_upstream_waits_for_the_outcome():
    t = table()
    for d in range(2):
        t.report(report(d, x=True), 0.0, 0.0)
    fuse = only(t.expire(DEADLINE), Fuse)
    escalate = only(t.fused(fuse.frame, UNSURE, DEADLINE), Escalate)  # features came along
    assert only(t.report(report(2), 0.3, 0.3), Late)
    first, waiting = t.settle(escalate.frame, Outcome(UNSURE, 0.4, degraded=True))
    assert not first.late and len(first.to) == 2 and first.frame.status is Status.DEGRADED
    assert waiting.late and [r.device_id for r, _ in waiting.to] == ["dev2"]


def test_a_frame_id_reused_long_after_is_a_new_frame():
    t = table()
    for d in range(3):
        actions = t.report(report(d), 0.0, 0.0)
    t.fused(actions[0].frame, SURE, 0.0)
    assert isinstance(t.report(report(0), 0.9, 0.9)[0], Late)  # within the late window
    assert t.report(report(0, rid=50), 1.5, 1.5) == []  # devices restarted their frame ids
    frame = t.get((1, 7))
    assert frame is not None and frame.phase is Phase.COLLECTING_SCORES and frame.opened == 1.5
    t.report(report(1, rid=51), 1.5, 1.5)
    fuse = only(t.report(report(2, rid=52), 1.5, 1.5), Fuse)
    assert fuse.frame is frame and [r.request_id for r, _ in frame.requests.values()] == [
        50,
        51,
        52,
    ]


def test_server_only_frames_skip_fusion_and_a_failed_upstream_is_an_error_to_every_device():
    t = table()
    view = encode_tensor(np.zeros((1, 2)), Encoding.UNIT8, name="x")
    raw = [Request(i + 1, "m", 1, d, 3, 0, (view,)) for i, d in enumerate(DEVICES)]
    assert t.report(raw[0], 0.0, 0.0) == []
    escalate = only(t.expire(DEADLINE), Escalate)
    assert escalate.timed_out is Phase.COLLECTING_SCORES and escalate.frame.local == -1
    respond = only(t.settle(escalate.frame, Outcome(None, 0.3, error="no answer")), Respond)
    assert respond.frame.outcome is not None and respond.frame.outcome.answer is None


def test_only_the_newest_closed_frames_are_kept():
    t = FrameTable(DEVICES[:1], deadline=DEADLINE, late_window=100.0, keep=2)
    for frame_id in range(3):
        (fuse,) = t.report(report(0, frame_id), 0.0, 0.0)
        t.fused(fuse.frame, SURE, 0.0)
    assert t.get((1, 0)) is None and t.get((1, 1)) is not None and t.get((1, 2)) is not None
