"""The edge tier's transport glue: subscriptions, the thread that owns the frame table, the
forwards upstream, publishing. What to do with each frame is decided by `frames.FrameTable`,
the tensor work and the replies by `compute`.

Transport callbacks only enqueue; one thread takes messages (and the results of the forwards)
from that queue, feeds the table and carries out its actions, so the table needs no lock.
Forwards wait for the server on a small pool and post their result back to the queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.runtime.checks import RequestError, check_device_report, read_request
from ddnn.runtime.client import Requester
from ddnn.runtime.config import EdgeConfig
from ddnn.runtime.edge.compute import EdgeCompute, Forward, answer, ask_features
from ddnn.runtime.edge.frames import (
    Action,
    AskFeatures,
    Escalate,
    Frame,
    FrameTable,
    Fuse,
    Late,
    Outcome,
    Phase,
    Reject,
    Respond,
)
from ddnn.runtime.edge.rollout import EdgeRollout, EdgeVersions
from ddnn.runtime.executor import Answer, exit_thresholds
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.metric_names import (
    FEATURES_ASKED,
    FEATURES_INCOMPLETE,
    FRAMES_ANSWERED,
    FRAMES_INCOMPLETE,
    LATE_DEVICE_REPORTS,
    REQUESTS_RECEIVED,
    UPSTREAM_FAILURES,
)
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import (
    EDGE_PREFIX,
    default_device_ids,
    reply_topic,
    request_filter,
    request_topic,
)
from ddnn.runtime.replies import answer_bad_message, publish_quietly, reply_error
from ddnn.runtime.transport import Transport
from ddnn.runtime.wire import (
    ErrorFrame,
    Reply,
    Request,
    Status,
    encode_frame,
)
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)


def _load(run_dir: str | Path) -> tuple[str, int, HierarchicalModel]:
    """The stored model's name, version and sections."""
    stored = open_model(run_dir)
    return stored.name, stored.version, stored.load()


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    arrived: float  # time.perf_counter() when the transport handed it over


@dataclass(frozen=True)
class _Upstream:
    """A forward's result, back on the table's thread."""

    frame: Frame
    answer: Reply | ErrorFrame | None  # None: no answer in time, or the publish failed
    fallback: Answer | None
    edge_done: float  # when the edge's own part ended


class EdgeAggregator(Service):
    """The edge of one multi-device or 3-tier model: collects each frame's device reports,
    fuses, decides, asks for features, runs the edge section, forwards, answers. Built inert:
    `start()` (or `with`) starts its thread and subscribes, `close()` stops it."""

    def __init__(
        self,
        transport: Transport,
        run_dir: str | Path,
        config: EdgeConfig | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config = config or EdgeConfig()
        self.model_name, self.version, self.model = _load(run_dir)
        self.spec = self.model.spec
        if self.spec.devices < 2 and self.spec.sections[1].tier != "edge":
            raise DdnnError(
                f"model {self.model_name} has one device and no edge section: devices talk to "
                "the server directly, no edge is needed"
            )
        self.compute = EdgeCompute(self.model, exit_thresholds(self.spec, config.thresholds))
        self.device_ids = list(config.device_ids or default_device_ids(self.spec.devices))
        if len(self.device_ids) != self.spec.devices:
            raise DdnnError(f"{len(self.device_ids)} device ids for {self.spec.devices} devices")
        self.transport = transport
        self.metrics = metrics or Metrics()
        frame_deadline = config.frame_deadline_ms / 1000.0
        self.table = FrameTable(
            self.device_ids,
            deadline=frame_deadline,
            # a report for an answered frame counts as late within this window, as new after it
            late_window=2 * frame_deadline + self.upstream_deadline + 1.0,
        )
        self.requester = Requester(transport, config.identity)
        self.versions = EdgeVersions(self.version, self.compute)  # which version judges a frame
        self._newest_frame = 0
        self.rollout: EdgeRollout | None = None
        if config.follow is not None:
            self.rollout = EdgeRollout(
                transport, self.versions, model=self.model_name, identity=config.identity,
                run_dir=run_dir, mode=config.follow, thresholds=config.thresholds,
                margin=config.switch_after_frames, metrics=self.metrics,
            )  # fmt: skip
        self._inbox: queue.Queue[_Message | _Upstream | None] = queue.Queue()
        self._upstream: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge", daemon=True)

    @property
    def upstream_deadline(self) -> float:
        """Seconds a forward waits for the server."""
        return self.config.upstream_deadline_ms / 1000.0

    def start(self) -> Self:
        """Start the table's thread, the forwards' pool and the subscriptions. Starting twice,
        or after close, does nothing."""
        if self._upstream is not None or self._stop.is_set():
            return self
        self._upstream = ThreadPoolExecutor(max_workers=16, thread_name_prefix="edge-upstream")
        self._thread.start()
        self.requester.start()
        if self.rollout is not None:
            self.rollout.start()
        for section in (0, 1):
            topic_filter = request_filter(self.model_name, section, prefix=EDGE_PREFIX)
            self.transport.subscribe(topic_filter, self._on_message)
        return self

    def healthy(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread and the pool, drop the reply subscription; closing again does
        nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._upstream is None:  # never started
            return
        self._inbox.put(None)
        self._thread.join(timeout=5)
        self._upstream.shutdown(wait=True, cancel_futures=True)
        if self.rollout is not None:
            self.rollout.close()
        self.requester.close()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._inbox.put(_Message(topic, payload, time.perf_counter()))

    # -- the loop: one thread owns the frame table ---------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            deadline = self.table.next_deadline()
            timeout = 0.1 if deadline is None else max(0.0, deadline - time.perf_counter())
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if isinstance(item, _Message):
                    self._admit(item)
                elif isinstance(item, _Upstream):
                    self._upstream_done(item)
                self._run(self.table.expire(time.perf_counter()))
                if self.rollout is not None:
                    self.rollout.tick(self._newest_frame)
            except Exception:  # never let one message stop the edge
                log.exception("edge failed on a message")

    def _admit(self, message: _Message) -> None:
        self.metrics.inc(*REQUESTS_RECEIVED)
        topic, payload = message.topic, message.payload
        try:
            request = read_request(topic, payload, prefix=EDGE_PREFIX)
        except RequestError as exc:
            answer_bad_message(
                self.transport, self.metrics, topic, payload, exc.status, str(exc), EDGE_PREFIX
            )
            return
        version, compute = self.versions.for_frame(request.frame_id)
        try:
            check_device_report(
                request,
                version=version,
                devices=self.device_ids,
                row=compute.row(request.section),
                classes=compute.classes,
            )
        except RequestError as exc:
            reply_error(self.transport, self.metrics, request, exc.status, str(exc))
            return
        self._newest_frame = max(self._newest_frame, request.frame_id)
        self._run(self.table.report(request, message.arrived, time.perf_counter()))

    # -- carrying out the table's actions -------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Fuse):
                if action.timed_out:
                    self.metrics.inc(*FRAMES_INCOMPLETE)
                compute = self._compute(action.frame)
                local = compute.fuse(action.frame.requests)
                self._run(self.table.fused(action.frame, local, time.perf_counter()))
            elif isinstance(action, AskFeatures):
                self.metrics.inc(*FEATURES_ASKED)
                for request, arrived in action.asks:
                    ask = ask_features(action.frame, request, arrived)
                    self._publish(request, ask)
            elif isinstance(action, Escalate):
                if action.timed_out is Phase.COLLECTING_SCORES:
                    self.metrics.inc(*FRAMES_INCOMPLETE)
                elif action.timed_out is Phase.AWAITING_FEATURES:
                    self.metrics.inc(*FEATURES_INCOMPLETE)
                self._escalate(action.frame)
            elif isinstance(action, Respond):
                self._respond(action)
            elif isinstance(action, Late):
                self.metrics.inc(*LATE_DEVICE_REPORTS)
            elif isinstance(action, Reject):
                error = action.error
                reply_error(self.transport, self.metrics, action.request, error.status, str(error))

    def _escalate(self, frame: Frame) -> None:
        """Raw views to the server (server-only), or the features that came to the edge section
        or the server; with no features at all the fused scores are all there is."""
        compute = self._compute(frame)
        x, present = compute.views(frame.requests, frame.section)
        if frame.section == 0:
            self._forward(frame, Forward(0, compute.encode(0, x, present), None))
            return
        assert frame.fused is not None
        if not present.any():  # nobody sent features in time
            self._settle(frame, Outcome(frame.fused, time.perf_counter(), degraded=True))
            return
        step = compute.upper(x, present, frame.fused)
        if isinstance(step, Forward):
            self._forward(frame, step)
        else:
            self._settle(frame, Outcome(step, time.perf_counter()))

    def _compute(self, frame: Frame) -> EdgeCompute:
        """The sections of the version that judges `frame` (see `rollout`)."""
        return self.versions.for_frame(frame.frame_id)[1]

    def _settle(self, frame: Frame, outcome: Outcome) -> None:
        self._run(self.table.settle(frame, outcome))

    def _respond(self, action: Respond) -> None:
        frame = action.frame
        outcome = frame.outcome
        assert outcome is not None
        if outcome.answer is None:  # server-only and the server failed: nothing to answer with
            for request, _ in action.to:
                reply_error(self.transport, self.metrics, request, Status.TIMEOUT, outcome.error)
            return
        for request, arrived in action.to:
            self._publish(request, answer(frame, request, arrived, late=action.late))
        if not action.late:
            exit_index = str(outcome.answer.exit_index)
            self.metrics.inc(*FRAMES_ANSWERED, exit=exit_index)

    def _publish(self, request: Request, reply: Reply) -> None:
        publish_quietly(self.transport, reply_topic(request.device_id), encode_frame(reply))

    # -- upstream ------------------------------------------------------------------------------

    def _forward(self, frame: Frame, step: Forward) -> None:
        version = self.versions.for_frame(frame.frame_id)[0]  # the version the frame ran on
        request = Request(
            self.requester.next_id(), self.model_name, version, self.requester.identity,
            frame.frame_id, step.section, step.tensors,
        )  # fmt: skip
        edge_done = time.perf_counter()
        assert self._upstream is not None  # started
        self._upstream.submit(self._await_upstream, frame, request, step.fallback, edge_done)

    def _await_upstream(
        self, frame: Frame, request: Request, fallback: Answer | None, edge_done: float
    ) -> None:
        """On the pool: wait for the server, then hand its answer back to the table's thread."""
        topic = request_topic(self.model_name, request.section, self.requester.identity)
        try:
            pending, _ = self.requester.send(topic, request)
            reply = self.requester.wait(request.request_id, pending, self.upstream_deadline)
        except DdnnError as exc:
            log.warning("edge could not forward frame %d: %s", frame.frame_id, exc)
            reply = None
        self._inbox.put(_Upstream(frame, reply, fallback, edge_done))

    def _upstream_done(self, result: _Upstream) -> None:
        frame, reply = result.frame, result.answer
        if isinstance(reply, Reply):
            ans = Answer(reply.predicted, reply.exit_index, reply.entropy, True)
            self._settle(frame, Outcome(ans, result.edge_done, upstream=reply))
            return
        why = reply.message if isinstance(reply, ErrorFrame) else "server did not answer in time"
        self.metrics.inc(*UPSTREAM_FAILURES)
        log.info("frame %d: %s; answering from the edge", frame.frame_id, why)
        degraded = result.fallback is not None  # server-only has nothing local to fall back on
        self._settle(frame, Outcome(result.fallback, result.edge_done, degraded, error=why))
