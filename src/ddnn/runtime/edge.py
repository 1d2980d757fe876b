"""The edge tier (DDNN's local aggregator, and the edge section of 3-tier models).

Devices of one model report each event (frame id) here with their exit scores only (DDNN's
4|C| bytes a device). When all have reported, or the frame's deadline passes, the edge fuses the
scores of the devices present and answers when the fused local exit is confident. Otherwise it
asks the devices for their features (a FEATURES reply), waits for them up to the frame deadline
again, runs its own section and exit if the model has one, and forwards what is still not
confident to the server. A device that did not report in time is left out and the reply names
it. A device may also send its features with its scores; then nothing is asked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddnn.errors import DdnnError
from ddnn.evaluate.communication import binary_output
from ddnn.runtime.client import Requester
from ddnn.runtime.executor import Answer, SectionExecutor, decide
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import (
    EDGE_IDENTITY,
    EDGE_PREFIX,
    default_device_ids,
    reply_topic,
    request_filter,
    request_topic,
    topic_of,
)
from ddnn.runtime.replies import answer_bad_message, publish_quietly, reply_error
from ddnn.runtime.transport import Transport
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    decode_frame,
    decode_tensor,
    encode_frame,
    encode_tensor,
)
from ddnn.store.artifact import load_model, read_spec_doc

log = logging.getLogger(__name__)


@dataclass
class _Frame:
    section: int  # 1: device+server (scores, then features), 0: server-only (raw views)
    frame_id: int
    opened: float
    # index -> (the device's latest request, when it arrived): replies answer the latest one
    requests: dict[int, tuple[Request, float]] = field(default_factory=dict)
    fused: Answer | None = None  # the fused local exit's answer, once decided
    asked: set[int] = field(default_factory=set)  # devices asked for features, not yet sent
    asked_at: float = 0.0
    missing: tuple[str, ...] = ()
    # A device that reports after its frame was dispatched gets the frame's answer (marked
    # degraded) instead of opening a new frame: a late device catches up at once.
    late: list[Request] = field(default_factory=list)
    respond: Callable[[Request], None] | None = None  # set once the frame is answered
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def local(self) -> int:
        """The fused local exit's prediction, reported to the devices (-1: none, server-only)."""
        return self.fused.predicted if self.fused is not None else -1


class EdgeAggregator:
    def __init__(
        self,
        transport: Transport,
        run_dir: str | Path,
        device_ids: list[str] | None = None,
        frame_deadline_ms: float = 200.0,
        upstream_deadline_ms: float = 2000.0,
        identity: str = EDGE_IDENTITY,
        metrics: Metrics | None = None,
    ) -> None:
        doc = read_spec_doc(run_dir)
        self.model_name, self.version = str(doc["name"]), int(doc["version"])
        self.model = load_model(run_dir)
        self.spec = self.model.spec
        if self.spec.devices < 2 and self.spec.sections[1].tier != "edge":
            raise DdnnError(
                f"model {self.model_name} has one device and no edge section: devices talk to "
                "the server directly, no edge is needed"
            )
        self.executor = SectionExecutor(self.model)
        self.binary_features = binary_output(self.model.devices[0])  # type: ignore[arg-type]
        self.device_ids = device_ids or default_device_ids(self.spec.devices)
        if len(self.device_ids) != self.spec.devices:
            raise DdnnError(f"{len(self.device_ids)} device ids for {self.spec.devices} devices")
        self.index = {d: i for i, d in enumerate(self.device_ids)}
        self.transport = transport
        self.metrics = metrics or Metrics()
        self.frame_deadline = frame_deadline_ms / 1000.0
        self.upstream_deadline = upstream_deadline_ms / 1000.0
        # a report for an answered frame counts as late within this window, as new after it
        self.late_window = 2 * self.frame_deadline + self.upstream_deadline + 1.0
        self.requester = Requester(transport, identity)
        self._inbox: queue.Queue[tuple[str, bytes, float] | None] = queue.Queue()
        self._frames: dict[tuple[int, int], _Frame] = {}  # collecting scores
        self._awaiting: dict[tuple[int, int], _Frame] = {}  # features asked for
        self._dispatched: OrderedDict[tuple[int, int], _Frame] = OrderedDict()
        self._upstream = ThreadPoolExecutor(max_workers=16, thread_name_prefix="edge-upstream")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge", daemon=True)
        self._thread.start()
        for section in (0, 1):
            topic_filter = request_filter(self.model_name, section, prefix=EDGE_PREFIX)
            transport.subscribe(topic_filter, self._on_message)

    def healthy(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=5)
        self._upstream.shutdown(wait=True, cancel_futures=True)
        self.requester.close()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._inbox.put((topic, payload, time.perf_counter()))

    # -- the aggregation loop: one thread owns the frame table --------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            timeout = self._next_timeout()
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is not None:
                try:
                    self._admit(*item)
                except Exception:  # never let one message stop the edge
                    log.exception("edge failed on a message")
            self._flush_expired()

    def _next_timeout(self) -> float:
        starts = [f.opened for f in self._frames.values()]
        starts += [f.asked_at for f in self._awaiting.values()]
        if not starts:
            return 0.1
        return max(0.0, min(starts) + self.frame_deadline - time.perf_counter())

    def _admit(self, topic: str, payload: bytes, arrived: float) -> None:
        self.metrics.inc("requests_received_total", "device messages received")
        try:
            frame = decode_frame(payload)
            if not isinstance(frame, Request):
                raise DdnnError(f"expected a request on {topic}")
            if topic != topic_of(frame, prefix=EDGE_PREFIX):
                raise DdnnError("the request's model, section or device does not match its topic")
        except DdnnError as exc:
            answer_bad_message(
                self.transport,
                self.metrics,
                topic,
                payload,
                Status.MALFORMED,
                str(exc),
                EDGE_PREFIX,
            )
            return
        try:
            self._check(frame)
        except DdnnError as exc:
            code = Status.UNKNOWN_MODEL if "version" in str(exc) else Status.BAD_INPUT
            reply_error(self.transport, self.metrics, frame, code, str(exc))
            return
        key = (frame.section, frame.frame_id)
        if key in self._awaiting:
            self._features_arrived(key, frame, arrived)
            return
        done = self._dispatched.get(key)
        if done is not None and arrived - done.opened <= self.late_window:
            self._late(done, frame)
            return
        if done is not None:  # long after: a device that restarted its frame ids, a new event
            del self._dispatched[key]
        if frame.section == 1 and not any(t.name == "scores" for t in frame.tensors):
            reply_error(
                self.transport, self.metrics, frame, Status.BAD_INPUT,
                f"features for frame {frame.frame_id}, which this edge did not ask for: send "
                "the exit scores first",
            )  # fmt: skip
            return
        state = self._frames.setdefault(key, _Frame(frame.section, frame.frame_id, arrived))
        state.requests[self.index[frame.device_id]] = (frame, arrived)
        if len(state.requests) == self.spec.devices:
            del self._frames[key]
            self._dispatch(state)

    def _late(self, state: _Frame, frame: Request) -> None:
        self.metrics.inc("late_device_reports_total", "reports after their frame was dispatched")
        with state.lock:
            if state.respond is None:
                state.late.append(frame)
                return
            respond = state.respond
        respond(frame)

    def _settle(self, state: _Frame, respond: Callable[[Request], None]) -> None:
        """The frame is answered: late reports from now on (and those waiting) get `respond`."""
        with state.lock:
            state.respond, waiting, state.late = respond, state.late, []
        for frame in waiting:
            respond(frame)

    def _check(self, frame: Request) -> None:
        if frame.model_version != self.version:
            raise DdnnError(
                f"model {frame.model} v{frame.model_version} is not served by this edge "
                f"(it has v{self.version})"
            )
        if frame.device_id not in self.index:
            raise DdnnError(
                f"unknown device {frame.device_id!r}; this edge fuses {self.device_ids}"
            )
        tensors = {t.name: t for t in frame.tensors}
        row = self.executor.input_shape(frame.section)[1:]  # one device's row
        if frame.section == 1 and not tensors.keys() & {"x", "scores"}:
            raise DdnnError("a device's request needs tensor 'scores' (and later 'x')")
        if (frame.section == 0 or "x" in tensors) and (
            "x" not in tensors or tuple(tensors["x"].shape) != (1, *row)
        ):
            got = tuple(tensors["x"].shape) if "x" in tensors else None
            raise DdnnError(f"tensor 'x' must have shape {(1, *row)}, got {got}")
        if "scores" in tensors:
            n = self.spec.exit_num_classes(self.spec.sections[0])
            if tuple(tensors["scores"].shape) != (n,):
                raise DdnnError(f"tensor 'scores' must have shape ({n},)")

    def _flush_expired(self) -> None:
        now = time.perf_counter()
        for key in [k for k, f in self._frames.items() if now - f.opened >= self.frame_deadline]:
            state = self._frames.pop(key)
            self.metrics.inc("frames_incomplete_total", "frames fused without every device")
            self._dispatch(state)
        late = [k for k, f in self._awaiting.items() if now - f.asked_at >= self.frame_deadline]
        for key in late:  # go on with the features that came; the others are missing
            state = self._awaiting.pop(key)
            self.metrics.inc("features_incomplete_total", "frames sent on without all features")
            for i in state.asked:
                del state.requests[i]  # already answered (FEATURES); a late report catches up
            state.missing += tuple(self.device_ids[i] for i in sorted(state.asked))
            state.asked = set()
            self._features_done(state)

    def _features_arrived(self, key: tuple[int, int], frame: Request, arrived: float) -> None:
        state = self._awaiting[key]
        index = self.index[frame.device_id]
        if index not in state.requests:  # reported after the scores were fused: catches up
            self._late(state, frame)
            return
        if index not in state.asked or not any(t.name == "x" for t in frame.tensors):
            reply_error(
                self.transport, self.metrics, frame, Status.BAD_INPUT,
                f"frame {frame.frame_id} waits for features ('x') from {self._names(state.asked)}",
            )  # fmt: skip
            return
        state.requests[index] = (frame, arrived)
        state.asked.discard(index)
        if not state.asked:
            del self._awaiting[key]
            self._features_done(state)

    def _features_done(self, state: _Frame) -> None:
        """All asked features came, or their deadline passed: on to the upper sections."""
        self._mark_dispatched(state)
        assert state.fused is not None
        self._upper(state, state.fused, time.perf_counter())

    def _names(self, indices: set[int]) -> str:
        return ", ".join(self.device_ids[i] for i in sorted(indices))

    def _mark_dispatched(self, state: _Frame) -> None:
        self._dispatched[(state.section, state.frame_id)] = state
        if len(self._dispatched) > 4096:
            self._dispatched.popitem(last=False)

    # -- deciding and forwarding --------------------------------------------------------------

    def _dispatch(self, state: _Frame) -> None:
        """Every device reported (or the deadline passed): decide on the fused scores, ask for
        features when unsure, or forward raw views (server-only)."""
        start = time.perf_counter()
        state.missing = tuple(d for i, d in enumerate(self.device_ids) if i not in state.requests)
        if state.section == 0:  # server-only: forward every raw view, fused upstream
            self._mark_dispatched(state)
            x, present = self._stack(state)
            self._forward(state, 0, x, present, None, start)
            return
        rows = {i: {t.name: t for t in r.tensors} for i, (r, _) in state.requests.items()}
        n = self.spec.exit_num_classes(self.spec.sections[0])
        scores = np.zeros((self.spec.devices, n), np.float32)  # [D, C]
        present = np.zeros(self.spec.devices, dtype=bool)
        for i, tensors in rows.items():
            scores[i], present[i] = decode_tensor(tensors["scores"]), True
        with torch.no_grad():
            fused = self.model.fuse_device_exits(
                torch.from_numpy(scores)[None], torch.from_numpy(present)[None]
            ).numpy()  # [1, C]
        local = decide(self.model, 0, fused)[0]
        state.fused = local
        if local.confident:
            self._mark_dispatched(state)
            self._answer(state, local, start, time.perf_counter())
            return
        state.asked = {i for i, tensors in rows.items() if "x" not in tensors}
        if not state.asked:  # the features came with the scores
            self._mark_dispatched(state)
            self._upper(state, local, start)
            return
        state.asked_at = time.perf_counter()
        self._awaiting[(state.section, state.frame_id)] = state
        self.metrics.inc("features_asked_total", "devices asked for their features")
        for i in state.asked:
            req, arrived = state.requests[i]
            ask = Reply(
                req.request_id, Status.FEATURES, local.predicted, 0, local.entropy,
                (start - arrived) * 1000, (state.asked_at - start) * 1000, state.missing,
            )  # fmt: skip
            publish_quietly(self.transport, reply_topic(req.device_id), encode_frame(ask))

    def _stack(self, state: _Frame) -> tuple[np.ndarray, np.ndarray]:
        """The devices' rows of 'x' ([D, *row], zeros where absent) and who is present."""
        present = np.zeros(self.spec.devices, dtype=bool)
        x = np.zeros((self.spec.devices, *self.executor.input_shape(state.section)[1:]), np.float32)
        for i, (req, _) in state.requests.items():
            tensor = next((t for t in req.tensors if t.name == "x"), None)
            if tensor is not None:
                x[i], present[i] = decode_tensor(tensor)[0], True
        return x, present

    def _upper(self, state: _Frame, local: Answer, start: float) -> None:
        """The fused local exit was unsure: the edge section (when the model has one) on the
        features that came, else the server."""
        x, present = self._stack(state)
        if not present.any():  # nobody sent features in time: the fused scores are all there is
            self._answer(state, local, start, time.perf_counter(), degraded=True)
            return
        edge = self.spec.sections[1]
        if edge.tier != "edge":
            self._forward(state, 1, x, present, local, start)
            return
        with torch.no_grad():
            out = self.model.run_upper(
                edge.name, torch.from_numpy(x)[None], torch.from_numpy(present)[None]
            )
        assert out.logits is not None
        edge_answer = decide(self.model, 1, out.logits.numpy())[0]
        if edge_answer.confident:
            self._answer(state, edge_answer, start, time.perf_counter())
            return
        self._forward(state, 2, out.features.numpy()[0], None, edge_answer, start)

    def _forward(
        self, state: _Frame, section: int, x: np.ndarray, present: np.ndarray | None,
        fallback: Answer | None, start: float,
    ) -> None:  # fmt: skip
        if section == 0:
            tensors = [encode_tensor(x, Encoding.UNIT8, name="x")]  # raw views, [D, C, h, w]
        elif section == 1 and self.binary_features:
            assert present is not None
            x = x.copy()
            x[~present] = 1.0  # any +-1 value: the server masks absent devices out
            tensors = [encode_tensor(x, Encoding.BITS, name="x")]
        else:
            tensors = [encode_tensor(x, Encoding.FLOAT32, name="x")]
        if present is not None:
            tensors.append(
                encode_tensor(present.astype(np.float32), Encoding.FLOAT32, name="present")
            )
        rid = self.requester.next_id()
        request = Request(
            rid, self.model_name, self.version, self.requester.identity, state.frame_id, section,
            tuple(tensors),
        )  # fmt: skip
        edge_done = time.perf_counter()
        self._upstream.submit(self._await_upstream, state, request, fallback, start, edge_done)

    def _await_upstream(
        self, state: _Frame, request: Request, fallback: Answer | None, start: float,
        edge_done: float,
    ) -> None:  # fmt: skip
        topic = request_topic(self.model_name, request.section, self.requester.identity)
        try:
            pending, _ = self.requester.send(topic, request)
            answer = self.requester.wait(request.request_id, pending, self.upstream_deadline)
        except DdnnError as exc:
            log.warning("edge could not forward frame %d: %s", state.frame_id, exc)
            answer = None
        if isinstance(answer, Reply):
            ans = Answer(answer.predicted, answer.exit_index, answer.entropy, True)
            self._answer(state, ans, start, edge_done, answer)
            return
        why = answer.message if isinstance(answer, ErrorFrame) else "server did not answer in time"
        self.metrics.inc("upstream_failures_total", "forwards without a server answer")
        log.info("frame %d: %s; answering from the edge", state.frame_id, why)
        if fallback is None:  # server-only mode has nothing local to fall back on

            def fail(req: Request) -> None:
                reply_error(self.transport, self.metrics, req, Status.TIMEOUT, why)

            for req, _ in state.requests.values():
                fail(req)
            self._settle(state, fail)
            return
        self._answer(state, fallback, start, edge_done, degraded=True)

    def _answer(
        self, state: _Frame, ans: Answer, start: float, done: float,
        upstream: Reply | None = None, degraded: bool = False,
    ) -> None:  # fmt: skip
        missing = state.missing
        status = Status.DEGRADED if degraded or missing else Status.OK
        local = (encode_tensor(np.array([state.local], np.float32), name="local"),)
        compute_ms = (done - start) * 1000 + (upstream.compute_ms if upstream else 0.0)
        for req, arrived in state.requests.values():
            queue_ms = (start - arrived) * 1000 + (upstream.queue_ms if upstream else 0.0)
            reply = Reply(
                req.request_id, status, ans.predicted, ans.exit_index, ans.entropy,
                queue_ms, compute_ms, missing, local,
            )  # fmt: skip
            publish_quietly(self.transport, reply_topic(req.device_id), encode_frame(reply))
        self.metrics.inc("frames_answered_total", "frames answered", exit=str(ans.exit_index))

        def late(req: Request) -> None:  # its data was not used: degraded, named as missing
            reply = Reply(
                req.request_id, Status.DEGRADED, ans.predicted, ans.exit_index, ans.entropy,
                0.0, 0.0, missing, local,
            )  # fmt: skip
            publish_quietly(self.transport, reply_topic(req.device_id), encode_frame(reply))

        self._settle(state, late)
