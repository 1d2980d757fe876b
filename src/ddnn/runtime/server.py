"""The server tier: a pool of workers answering offloaded requests for one or more stored models.

Messages are only queued on the transport's thread; workers decode, batch the requests that
share a model, version, section and shape (waiting at most `max_wait_ms` for company), run the
upper sections and reply. One bad message gets an error reply and never stops the server.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from ddnn.errors import DdnnError
from ddnn.runtime.checks import (
    RequestError,
    UnknownModel,
    check_size,
    read_request,
    request_limit,
    server_inputs,
)
from ddnn.runtime.collecting import collect_answers, open_collector
from ddnn.runtime.config import ServerConfig
from ddnn.runtime.executor import SectionExecutor
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.metric_names import (
    BATCH_COMPUTE_MS,
    BATCHES,
    DUPLICATES_DROPPED,
    INLINE_REQUESTS,
    QUEUE_MS,
    REPLIES,
    REQUESTS_RECEIVED,
    WORKER_RESTARTS,
)
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import model_filter, reply_topic
from ddnn.runtime.replies import answer_bad_message, publish_quietly, reply_error
from ddnn.runtime.transport import Transport
from ddnn.runtime.wire import (
    Request,
    Status,
    encode_answer,
)
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)

_INLINE_GAP_S = 0.0003  # messages closer than this were queued at the broker or socket: load
# a reply's topic, per device id of a decoded (so checked) request: its two checks cost more
_reply_topic = functools.lru_cache(maxsize=4096)(reply_topic)


class ModelDB:
    """The models a server answers for, keyed by (name, version): several versions can be served
    side by side while devices move from one to the next."""

    def __init__(self, run_dirs: list[str | Path]) -> None:
        if not run_dirs:
            raise DdnnError("give the server at least one model folder")
        self.models: dict[tuple[str, int], SectionExecutor] = {}
        for folder in run_dirs:
            stored = open_model(folder)
            key = (stored.name, stored.version)
            self.models[key] = SectionExecutor(stored.load())
            log.info("serving %s v%d from %s", key[0], key[1], folder)

    def used(self, name: str, version: int, device: str) -> None:
        """A request from `device` named `name` v`version` (live tables track it)."""

    def get(self, name: str, version: int) -> SectionExecutor:
        executor = self.models.get((name, version))
        if executor is None:
            served = ", ".join(f"{n} v{v}" for n, v in sorted(self.models))
            raise UnknownModel(f"model {name} v{version} is not served here; served: {served}")
        return executor

    def input_shape(self, name: str, version: int, section: int) -> tuple[int, ...]:
        """The shape of 'x' in a request to `section`; UnknownModel when not served here."""
        executor = self.get(name, version)
        if not 0 <= section < len(executor.spec.sections):
            raise UnknownModel(f"model {name} v{version} has no section {section}")
        return executor.input_shape(section)

    @functools.cached_property
    def request_limit(self) -> int:
        """Bytes of the largest request any served section accepts."""
        return request_limit(
            [e.input_shape(s) for e in self.models.values() for s in range(len(e.spec.sections))]
        )


@dataclass
class _Item:
    topic: str
    payload: bytes
    arrived: float  # time.perf_counter() when the transport handed it over


@dataclass
class _Job:
    request: Request
    arrived: float
    x: np.ndarray  # [*input_shape]
    present: np.ndarray | None  # [D] bool
    key: tuple[str, int, int, tuple[int, ...]]  # a batch shares model, version, section, shape


class InferenceServer(Service):
    """Subscribes (as a shared-subscription group) to requests for every section of every model
    in `db` and answers them with a pool of `config.workers` threads. Built inert: `start()`
    (or `with`) starts the workers and subscribes, `close()` stops them."""

    def __init__(
        self,
        transport: Transport,
        db: ModelDB,
        config: ServerConfig | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.transport = transport
        self.db = db
        self.config = config or ServerConfig()
        self.metrics = metrics or Metrics()
        self.metrics.add_source("mqtt", lambda: transport.stats)
        m = self.metrics  # counter keys built once: the per-request path updates them in one call
        self._received, self._inline = m.key(REQUESTS_RECEIVED), m.key(INLINE_REQUESTS)
        self._batches, self._replied = m.key(BATCHES), m.key(REPLIES, status="ok")
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=self.config.queue_limit)
        self._stop = threading.Event()
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()  # duplicate filter
        self._seen_lock = threading.Lock()
        self._busy = 0  # workers collecting or running a batch; read on the transport thread
        self._busy_lock = threading.Lock()
        self._last_read = 0.0  # when the transport thread last became free for a message
        self._threads: list[threading.Thread] = []
        self.collector = open_collector(self.config, self.metrics)  # None unless --collect

    @property
    def max_batch(self) -> int:
        return self.config.max_batch

    @property
    def max_wait(self) -> float:
        """Seconds a worker waits for company."""
        return self.config.max_wait_ms / 1000.0

    def start(self) -> Self:
        """Start the workers, then subscribe: a request never arrives before a worker can
        take it. Starting twice, or after close, does nothing."""
        if self._threads or self._stop.is_set():
            return self
        if self.collector is not None:
            self.collector.start()
        self._threads = [
            threading.Thread(target=self._supervise, name=f"server-worker-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for t in self._threads:
            t.start()
        for name in sorted({name for name, _ in self.db.models}):  # every section: unserved
            topic_filter = model_filter(name, group=self.config.group)  # ones get UNKNOWN_MODEL
            self.transport.subscribe(topic_filter, self._on_message)
        return self

    def healthy(self) -> bool:
        return (
            bool(self._threads)
            and not self._stop.is_set()
            and all(t.is_alive() for t in self._threads)
        )

    def close(self) -> None:
        """Stop the workers; closing again does nothing."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.collector is not None:
            self.collector.close()

    # -- transport thread: enqueue, or answer a lone request at once -------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = time.perf_counter()
        item = _Item(topic, payload, now)
        idle_gap, self._last_read = now - self._last_read, now
        if self._lone(idle_gap):
            self.metrics.update(((self._received, 1), (self._inline, 1)))
            self._run_batch([item])
            self._last_read = time.perf_counter()  # what arrived meanwhile is read at once: load
            return
        self.metrics.update(((self._received, 1),))
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._error(topic, payload, Status.OVERLOADED, "server queue full: request shed")

    def _lone(self, idle_gap: float) -> bool:
        """A request that found the server idle is answered on the transport thread: two thread
        hand-offs (to a worker, and the reply back to the network thread) are most of the
        framework's round trip. Under load messages are read back to back (gap below
        `_INLINE_GAP_S`) and go to the workers, which batch them."""
        return (
            self.config.inline
            and idle_gap > _INLINE_GAP_S
            and self._busy == 0
            and self._queue.empty()
        )

    # -- workers -----------------------------------------------------------------------------

    def _supervise(self) -> None:
        """A worker thread's body. `_work` already answers a failed batch with INTERNAL; a bug
        that escapes even that (e.g. in the error path) would silently cost the pool a worker,
        so the loop is restarted in place and counted, and the server keeps its capacity."""
        while not self._stop.is_set():
            try:
                self._work()
            except Exception:
                log.exception("server worker crashed; restarting it")
                self.metrics.inc(*WORKER_RESTARTS)
                self._stop.wait(0.1)  # a bug that fires on every message must not spin a core

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._busy_lock:  # busy from here: a request arriving now joins this batch
                self._busy += 1
            try:
                self._collect_and_run(first)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def _collect_and_run(self, first: _Item) -> None:
        """Batch `first` with what is queued (waiting up to `max_wait` for company), run it."""
        items = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(items) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                items.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        self._run_batch(items)

    def _run_batch(self, items: list[_Item]) -> None:
        try:
            self._process(items)
        except Exception:  # a bug must not kill the worker: answer every request with INTERNAL
            log.exception("worker failed on a batch of %d", len(items))
            for item in items:
                self._error(item.topic, item.payload, Status.INTERNAL, "internal server error")

    def _process(self, items: list[_Item]) -> None:
        groups: dict[tuple[str, int, int, tuple[int, ...]], list[_Job]] = defaultdict(list)
        for item in items:
            job = self._admit(item)
            if job is not None:
                groups[job.key].append(job)
        for (name, version, section, _), jobs in groups.items():
            self._run_group(self.db.get(name, version), section, jobs)

    def _admit(self, item: _Item) -> _Job | None:
        """Decode and check one message; answers errors itself and returns None for them."""
        try:
            check_size(item.payload, self.db.request_limit)
            frame = read_request(item.topic, item.payload)
        except RequestError as exc:
            self._error(item.topic, item.payload, exc.status, str(exc))
            return None
        if self._duplicate(frame):
            self.metrics.inc(*DUPLICATES_DROPPED)
            return None
        self.db.used(frame.model, frame.model_version, frame.device_id)
        try:
            shape = self.db.input_shape(frame.model, frame.model_version, frame.section)
            x, present = server_inputs(frame, shape)
        except RequestError as exc:
            self._reply_error(frame, exc.status, str(exc))
            return None
        key = (frame.model, frame.model_version, frame.section, shape)  # x.shape == shape
        return _Job(frame, item.arrived, x, present, key)

    def _run_group(self, executor: SectionExecutor, section: int, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        x = jobs[0].x[None] if len(jobs) == 1 else np.stack([j.x for j in jobs])  # [B, *in]
        present = None
        if any(j.present is not None for j in jobs):
            present = np.stack(
                [j.present if j.present is not None else np.ones(len(j.x), bool) for j in jobs]
            )  # [B, D]
        answers = executor.run(section, x, present)
        compute_ms = (time.perf_counter() - start) * 1000
        waits = [(start - job.arrived) * 1000 for job in jobs]
        sent = 0
        try:
            for job, ans, queue_ms in zip(jobs, answers, waits, strict=True):
                request = job.request
                reply = encode_answer(
                    request.request_id, ans.predicted, ans.exit_index, ans.entropy, queue_ms,
                    compute_ms,
                )  # fmt: skip
                self._publish(_reply_topic(request.device_id), reply)
                sent += 1
        finally:  # one lock for the batch, and only what was answered
            self.metrics.update(
                ((self._batches, 1), (self._replied, sent)),
                ((BATCH_COMPUTE_MS, (compute_ms,)), (QUEUE_MS, waits[:sent])),
            )
        if self.collector is not None:  # answered: keep them (queued, written off this thread)
            done_jobs = [(j.request, j.x, j.present) for j in jobs]
            collect_answers(self.collector, executor.spec, section, done_jobs, answers)

    # -- replies -----------------------------------------------------------------------------

    def _duplicate(self, frame: Request) -> bool:
        key = (frame.device_id, frame.request_id)
        with self._seen_lock:
            if key in self._seen:
                return True
            self._seen[key] = None
            if len(self._seen) > 100_000:
                self._seen.popitem(last=False)
        return False

    def _reply_error(self, frame: Request, code: Status, message: str) -> None:
        reply_error(self.transport, self.metrics, frame, code, message)

    def _error(self, topic: str, payload: bytes, code: Status, message: str) -> None:
        answer_bad_message(self.transport, self.metrics, topic, payload, code, message)

    def _publish(self, topic: str, payload: bytes) -> None:
        publish_quietly(self.transport, topic, payload)
