"""The end-device tier: run the device section, answer locally when the exit is confident,
otherwise offload its features (single device: to the server; several devices: to the edge) and
wait for the answer until a deadline, falling back to the local answer marked degraded."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from ddnn.emulation.cpu import dilated, slowdown_from_env
from ddnn.errors import DdnnError
from ddnn.export.engines import DeviceEngine, create_engine
from ddnn.model.outputs import OTHER
from ddnn.runtime.adaptive import BudgetController
from ddnn.runtime.client import Requester
from ddnn.runtime.config import DeviceConfig
from ddnn.runtime.executor import Answer, decide, exit_thresholds
from ddnn.runtime.lifecycle import Service
from ddnn.runtime.protocol import DEVICE_SERVER, EDGE_PREFIX, TOPIC_PREFIX, request_topic
from ddnn.runtime.rollout import Follower, Prepared
from ddnn.runtime.transport import Transport
from ddnn.runtime.wire import (
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    Tensor,
    decode_tensor,
    encode_tensor,
)
from ddnn.store.artifact import open_model

log = logging.getLogger(__name__)
# an offload's topic: the same few per device (a section and a prefix), checked once each
_request_topic = functools.lru_cache(maxsize=64)(request_topic)


@dataclass
class Record:
    """One sample's outcome as the device saw it: what `ddnn run` reports on."""

    device: str
    frame_id: int
    predicted: int  # the answer given (-1: none)
    exit_index: int  # exit that produced it (0 = local), -1 when none
    local_predicted: int  # the local exit's own prediction (-1 without a local exit)
    offloaded: bool
    status: str  # ok | degraded | lost | error
    device_ms: float
    comm_ms: float
    server_ms: float
    total_ms: float
    frame_bytes: int = 0
    packet_bytes: int = 0
    label: int = -1
    missing: list[str] = field(default_factory=list)
    message: str = ""
    threshold: float | None = None  # the local exit's threshold for this sample (None: no exit)
    version: int = 0  # the model version this sample was computed with, on every tier
    rollout: str = ""  # a live rollout on this sample: the switch, or why the device kept its own

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def view_tensor(view: np.ndarray) -> Tensor:
    """A raw view [C, h, w] in [0, 1] as sent upward: one byte a value, [1, C, h, w]."""
    return encode_tensor(view[None], Encoding.UNIT8, name="x")


def offload_tensor(engine: DeviceEngine, view: np.ndarray, feats: np.ndarray) -> Tensor:
    """What a device sends upward for one sample: its features (`feats`: the engine's output
    row, packed bits or floats), or for Big-Little its view [C, h, w]. Also used by the planner
    (planning/overhead.py), so a profile times the same encoding."""
    if engine.model.spec.sections[1].input == "raw":  # Big-Little: the big net sees the input
        return view_tensor(view)
    shape = (1, *engine.feature_shape)  # one device row: the edge or server fuses
    if engine.binary_features:
        return Tensor("x", Encoding.BITS, shape, feats.tobytes())
    return encode_tensor(feats.reshape(shape), Encoding.FLOAT32, name="x")


class DeviceClient(Service):
    """An end device. `infer(view)` answers one sample; use it from applications, or let
    `ddnn device` stream a dataset through it. Its engine loads at construction; `start()` (or
    `with`) subscribes to its replies, `close()` drops them and the engine."""

    def __init__(
        self,
        transport: Transport,
        run_dir: str | Path,
        config: DeviceConfig | None = None,
        *,
        engine: DeviceEngine | None = None,
    ) -> None:
        """`engine`: an engine already loaded for this device's section (default: the one
        `config.engine` names)."""
        self.config = config = config or DeviceConfig()
        stored = open_model(run_dir)
        self.model_name, self.version = stored.name, stored.version
        spec = stored.spec
        if not 0 <= config.index < spec.devices:
            raise DdnnError(f"device index {config.index} out of range: model has {spec.devices}")
        self.multi = spec.devices > 1
        self.view_shape = spec.view_shape
        # server-only mode, or a model without a device section, runs nothing on the device
        self.engine: DeviceEngine | None = None
        if spec.device_section is not None and config.mode == DEVICE_SERVER:
            self.engine = engine or create_engine(config.engine, run_dir, config.index)
        # the local exit's threshold: --threshold or the calibrated one; None when it is final
        local_exit = spec.exit_sections[0].name
        self.threshold = exit_thresholds(spec, config.thresholds).get(local_exit)
        self.controller: BudgetController | None = None
        if config.latency_budget_ms is not None:
            if self.engine is None or self.threshold is None:
                raise DdnnError(
                    "--latency-budget-ms adapts the device's local exit: this device has none "
                    "(server-only mode, or a model whose device section is its final exit)"
                )
            self.controller = BudgetController(self.threshold, config.latency_budget_ms)
        self.requester = Requester(transport, config.device_id)
        self.follower: Follower | None = None
        if config.follow is not None:
            parts = (f"device{config.index}",) if self.engine is not None else ()
            self.follower = Follower(
                transport, model=self.model_name, version=self.version,
                identity=config.device_id, parts=parts, folder=Path(run_dir) / "fetched",
                prepare=self._prepare, discard=_close_engine, mode=config.follow,
                coordinated=self.multi,
            )  # fmt: skip
        self.deadline_misses = 0  # offloads with no answer by the deadline (counted in _fallback)
        self._shed = False  # the last offload was answered OVERLOADED (for the budget controller)
        self._silence_reported = False  # warned about an upstream that does not answer
        self._closed = False
        self._slowdown = slowdown_from_env()  # set by `ddnn run --device-profile`

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def deadline_s(self) -> float:
        return self.config.deadline_ms / 1000.0

    def start(self) -> Self:
        self.requester.start()
        if self.follower is not None:
            self.follower.start()
        return self

    def close(self) -> None:
        """Idempotent: the requester and the engine close once."""
        if self._closed:
            return
        self._closed = True
        if self.follower is not None:
            self.follower.close()
        self.requester.close()
        if self.engine is not None:
            self.engine.close()

    def infer(self, view: np.ndarray, frame_id: int = 0, label: int = -1) -> Record:
        """view [C, h, w] float32 in [0, 1] (this device's view) -> Record."""
        view = np.asarray(view, dtype=np.float32)
        if tuple(view.shape) != tuple(self.view_shape):
            raise DdnnError(f"view has shape {view.shape}; this device expects {self.view_shape}")
        note = self._follow(frame_id) if self.follower is not None else ""
        t0 = time.perf_counter()
        if self.engine is None:  # server-only, or a model without a device section
            tensors = (view_tensor(view),)
            rec = self._offload(tensors, 0, frame_id, t0, 0.0, None)
        else:
            rec = self._device_first(view, frame_id, t0)
        rec.label, rec.version, rec.rollout = label, self.version, note
        rec.threshold = self.threshold if self.engine is not None else None
        if self.controller is not None:  # the next sample's threshold
            shed, self._shed = self._shed, False
            total = rec.total_ms if rec.offloaded else None
            self.threshold = self.controller.observe(
                time.perf_counter(), rec.device_ms, total, overloaded=shed
            )
        return rec

    def _prepare(self, folder: Path) -> tuple[DeviceEngine | None, float | None]:
        """The engine and local threshold of a fetched version (on the follower's thread)."""
        spec = open_model(folder).spec
        if tuple(spec.view_shape) != tuple(self.view_shape):
            raise DdnnError(
                f"it takes views of {spec.view_shape}, this device has {self.view_shape}"
            )
        engine = None
        if self.engine is not None:
            engine = create_engine(self.config.engine, folder, self.config.index)
        threshold = exit_thresholds(spec, self.config.thresholds).get(spec.exit_sections[0].name)
        return engine, threshold

    def _follow(self, frame_id: int) -> str:
        """Switch to a fetched version between two samples; the note for this sample's record."""
        assert self.follower is not None
        ready, note = self.follower.take(frame_id)
        if ready is None:
            return note
        return "; ".join(filter(None, [self._switch(ready), note]))

    def _switch(self, ready: Prepared) -> str:
        old, previous = self.engine, self.version
        self.engine, threshold = ready.payload
        self.version = ready.version
        if self.controller is None:  # an adapting threshold keeps its own course
            self.threshold = threshold
        _close_engine((old, None))
        return f"switched v{previous} -> v{ready.version}"

    def _device_first(self, view: np.ndarray, frame_id: int, t0: float) -> Record:
        assert self.engine is not None
        with dilated(self._slowdown):  # as slow as an emulated device's profile, if any
            logits, feats = self.engine.run(view[None])  # [1, C_exit], packed [1, n] or [...]
        model = self.engine.model
        local = decide(model, 0, logits, self.threshold)[0]
        device_ms = (time.perf_counter() - t0) * 1000
        if not self.multi and local.confident:
            return Record(
                self.device_id, frame_id, local.predicted, 0, local.predicted, False, "ok",
                device_ms, 0.0, 0.0, device_ms,
            )  # fmt: skip
        x = offload_tensor(self.engine, view, feats[0])
        if self.multi:  # scores first (DDNN's 4|C| bytes a device); features if the edge asks
            scores = encode_tensor(logits[0], Encoding.FLOAT32, name="scores")
            return self._offload((scores,), 1, frame_id, t0, device_ms, local, features=x)
        return self._offload((x,), 1, frame_id, t0, device_ms, local)

    def _offload(
        self, tensors: tuple[Tensor, ...], section: int, frame_id: int, t0: float,
        device_ms: float, local: Any, features: Tensor | None = None,
    ) -> Record:  # fmt: skip
        """Send, wait until the deadline; when the edge asks (FEATURES), send `features` for
        the same frame and wait for the answer in what is left of the deadline."""
        prefix = EDGE_PREFIX if self.multi else TOPIC_PREFIX
        topic = _request_topic(self.model_name, section, self.device_id, prefix=prefix)
        frame_bytes = packet_bytes = 0
        answer: Reply | ErrorFrame | None = None
        for attempt in (tensors, (features,) if features is not None else None):
            if attempt is None:
                break
            rid = self.requester.next_id()
            request = Request(
                rid, self.model_name, self.version, self.device_id, frame_id, section, attempt
            )
            try:
                pending, sent = self.requester.send(topic, request)
            except DdnnError as exc:  # disconnected, or refused before sending
                return self._fallback(
                    frame_id, t0, device_ms, local, str(exc), frame_bytes, packet_bytes
                )
            frame_bytes += sent.frame_bytes
            packet_bytes += sent.packet_bytes
            left = self.deadline_s - (time.perf_counter() - t0)
            answer = self.requester.wait(rid, pending, left)
            if not (isinstance(answer, Reply) and answer.status == Status.FEATURES):
                break
            # the fused local exit (all devices' scores) beats this device's own as a fallback
            local = Answer(answer.predicted, 0, answer.entropy, False)
        local_pred = local.predicted if local is not None else -1
        total_ms = (time.perf_counter() - t0) * 1000
        if answer is None:
            return self._fallback(
                frame_id, t0, device_ms, local, "deadline passed", frame_bytes, packet_bytes,
                missed=True,
            )  # fmt: skip
        self._silence_reported = False  # an answer came: warn again if upstream falls silent
        if isinstance(answer, ErrorFrame):
            self._shed = answer.code is Status.OVERLOADED
            return self._fallback(
                frame_id, t0, device_ms, local, f"{answer.code.name}: {answer.message}",
                frame_bytes, packet_bytes, status_if_none="error",
            )  # fmt: skip
        if answer.status == Status.FEATURES:  # asked again: nothing more to send
            return self._fallback(
                frame_id, t0, device_ms, local, "the edge asked for features twice",
                frame_bytes, packet_bytes, status_if_none="error",
            )  # fmt: skip
        server_ms = answer.queue_ms + answer.compute_ms
        extra = {t.name: decode_tensor(t) for t in answer.tensors}
        if "local" in extra:  # several devices: the local exit is the edge's fused one
            local_pred = int(extra["local"][0])
        status = "degraded" if answer.status.name == "DEGRADED" else "ok"
        return Record(
            self.device_id, frame_id, answer.predicted, answer.exit_index, local_pred, True,
            status, device_ms, max(total_ms - device_ms - server_ms, 0.0), server_ms, total_ms,
            frame_bytes, packet_bytes, missing=list(answer.missing_devices),
        )  # fmt: skip

    def _fallback(
        self, frame_id: int, t0: float, device_ms: float, local: Any, why: str,
        frame_bytes: int, packet_bytes: int, status_if_none: str = "lost", missed: bool = False,
    ) -> Record:  # fmt: skip
        """No usable answer from upstream: the local exit's answer, marked degraded. A missed
        deadline is counted, and the first of a run is a warning: a device with no server
        behind it would otherwise fall back quietly on every frame."""
        total_ms = (time.perf_counter() - t0) * 1000
        log.info("%s frame %d: %s", self.device_id, frame_id, why)
        if missed:
            self.deadline_misses += 1
            if not self._silence_reported:
                self._silence_reported = True
                where = getattr(self.requester.transport, "url", "the broker")
                upstream = "`ddnn edge` and `ddnn serve`" if self.multi else "`ddnn serve`"
                log.warning(
                    "no answer from a server on %s within %.0f ms: is %s running? "
                    "answering locally, marked degraded",
                    where, self.deadline_s * 1000, upstream,
                )  # fmt: skip
        if local is None:
            return Record(
                self.device_id, frame_id, -1, -1, -1, True, status_if_none, device_ms,
                total_ms - device_ms, 0.0, total_ms, frame_bytes, packet_bytes, message=why,
            )  # fmt: skip
        predicted = local.predicted
        if predicted == OTHER:  # Big-Little: the little net has no class to give
            predicted = -1
        return Record(
            self.device_id, frame_id, predicted, 0, local.predicted, True, "degraded", device_ms,
            total_ms - device_ms, 0.0, total_ms, frame_bytes, packet_bytes, message=why,
        )  # fmt: skip


def _close_engine(prepared: tuple[DeviceEngine | None, float | None]) -> None:
    engine = prepared[0]
    if engine is not None:
        engine.close()
