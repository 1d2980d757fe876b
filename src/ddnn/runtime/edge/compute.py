"""The edge's compute and its replies: fuse the devices' exit scores, run the edge section, encode
what goes upstream, and build every reply the edge sends a device (the one place that does).

Arrays in, answers out: no threads, no transport; the frame table decides when each runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import binary_output
from ddnn.runtime.edge.frames import Frame, Report
from ddnn.runtime.executor import Answer, SectionExecutor, decide
from ddnn.runtime.wire import (
    Encoding,
    Reply,
    Request,
    Status,
    Tensor,
    decode_tensor,
    encode_tensor,
)


@dataclass(frozen=True)
class Forward:
    """Not confident at the edge: send `tensors` to `section` upstream; `fallback` answers (as
    DEGRADED) when the server does not (None: nothing to fall back on, server-only)."""

    section: int
    tensors: tuple[Tensor, ...]
    fallback: Answer | None


def gather(
    requests: Mapping[int, Report], name: str, row: tuple[int, ...], devices: int
) -> tuple[np.ndarray, np.ndarray]:
    """The devices' tensor `name` as rows [D, *row] (zeros where absent) and who sent it [D]."""
    out = np.zeros((devices, *row), np.float32)
    present = np.zeros(devices, dtype=bool)
    for i, (request, _) in requests.items():
        tensor = next((t for t in request.tensors if t.name == name), None)
        if tensor is not None:
            out[i], present[i] = decode_tensor(tensor).reshape(row), True
    return out, present


class EdgeCompute:
    """One model's edge work: the local aggregator (fused device exits), the edge section and
    exit when the model has one, and the encoding of what it forwards."""

    def __init__(
        self, model: HierarchicalModel, thresholds: Mapping[str, float] | None = None
    ) -> None:
        """`thresholds`: section name -> T overriding the calibrated exits (--threshold)."""
        self.model = model
        self.spec = model.spec
        self.executor = SectionExecutor(model, thresholds)
        self.thresholds = self.executor.thresholds
        self.binary_features = binary_output(model.devices[0])  # type: ignore[arg-type]

    @property
    def classes(self) -> int:
        """Classes of the device exit: the length of a device's 'scores'."""
        return self.spec.exit_num_classes(self.spec.sections[0])

    def row(self, section: int) -> tuple[int, ...]:
        """One device's row of 'x' in a request to `section`."""
        return self.executor.input_shape(section)[1:]

    def fuse(self, requests: Mapping[int, Report]) -> Answer:
        """The fused local exit over the scores of the devices that sent them."""
        scores, present = gather(requests, "scores", (self.classes,), self.spec.devices)
        with torch.no_grad():
            fused = self.model.fuse_device_exits(
                torch.from_numpy(scores)[None], torch.from_numpy(present)[None]
            ).numpy()  # [1, C]
        return decide(self.model, 0, fused, self.thresholds.get(self.spec.sections[0].name))[0]

    def views(self, requests: Mapping[int, Report], section: int) -> tuple[np.ndarray, np.ndarray]:
        """The devices' 'x' for `section` [D, *row] and who sent it [D]."""
        return gather(requests, "x", self.row(section), self.spec.devices)

    def upper(self, x: np.ndarray, present: np.ndarray, local: Answer) -> Answer | Forward:
        """The local exit was unsure: the edge section (when the model has one) on the features
        x [D, *row] of the devices present, else (or when it is unsure too) the server."""
        edge = self.spec.sections[1]
        if edge.tier != "edge":
            return Forward(1, self.encode(1, x, present), local)
        with torch.no_grad():
            out = self.model.run_upper(
                edge.name, torch.from_numpy(x)[None], torch.from_numpy(present)[None]
            )
        assert out.logits is not None
        answer = decide(self.model, 1, out.logits.numpy(), self.thresholds.get(edge.name))[0]
        if answer.confident:
            return answer
        return Forward(2, self.encode(2, out.features.numpy()[0], None), answer)

    def encode(self, section: int, x: np.ndarray, present: np.ndarray | None) -> tuple[Tensor, ...]:
        """The tensors of a request to `section`: raw views as unit8, binary device features
        packed as bits, anything else float32; plus the `present` mask when given."""
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
        return tuple(tensors)


def ask_features(frame: Frame, request: Request, arrived: float) -> Reply:
    """FEATURES: the fused exit (`frame.fused`) is unsure, the device should send its 'x'."""
    local = frame.fused
    assert local is not None
    return Reply(
        request.request_id, Status.FEATURES, local.predicted, 0, local.entropy,
        (frame.started - arrived) * 1000, (frame.asked_at - frame.started) * 1000, frame.missing,
    )  # fmt: skip


def answer(frame: Frame, request: Request, arrived: float, *, late: bool) -> Reply:
    """The frame's answer to one device. A late device's data was not used: DEGRADED, no times."""
    outcome = frame.outcome
    assert outcome is not None and outcome.answer is not None
    ans, up = outcome.answer, outcome.upstream
    local = (encode_tensor(np.array([frame.local], np.float32), name="local"),)
    if late:
        status, queue_ms, compute_ms = Status.DEGRADED, 0.0, 0.0
    else:
        status = frame.status
        queue_ms = (frame.started - arrived) * 1000 + (up.queue_ms if up else 0.0)
        compute_ms = (outcome.done - frame.started) * 1000 + (up.compute_ms if up else 0.0)
    return Reply(
        request.request_id, status, ans.predicted, ans.exit_index, ans.entropy,
        queue_ms, compute_ms, frame.missing, local,
    )  # fmt: skip
