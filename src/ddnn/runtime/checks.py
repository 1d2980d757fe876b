"""Request checks shared by the server and the edge, raising typed errors.

Each error kind carries the wire `Status` its error reply gets, so a tier answers with
`exc.status` and never guesses the kind from the message text. The checks only read frames
(numpy at most): no transport, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ddnn.errors import DdnnError
from ddnn.runtime.wire import (
    TOPIC_PREFIX,
    Encoding,
    Request,
    Status,
    Tensor,
    decode_frame,
    decode_tensor,
    topic_of,
)


class RequestError(DdnnError):
    """A request a tier refuses; `status` is the code of the error reply it gets."""

    status: ClassVar[Status] = Status.BAD_INPUT


class MalformedRequest(RequestError):
    """The message is not a request frame, or not the one its topic names."""

    status = Status.MALFORMED


class UnknownModel(RequestError):
    """The model (name or version) is not served by this tier."""

    status = Status.UNKNOWN_MODEL


class BadInput(RequestError):
    """The request's tensors (or its device) do not match what the section expects."""

    status = Status.BAD_INPUT


def read_request(topic: str, payload: bytes, *, prefix: str = TOPIC_PREFIX) -> Request:
    """The request in `payload`, which must be the one `topic` (under `prefix`) names."""
    try:
        frame = decode_frame(payload)
    except DdnnError as exc:
        raise MalformedRequest(str(exc)) from exc
    if not isinstance(frame, Request):
        raise MalformedRequest(f"expected a request on {topic}, got a {type(frame).__name__}")
    if topic != topic_of(frame, prefix=prefix):
        raise MalformedRequest("the request's model, section or device does not match its topic")
    return frame


def tensors_by_name(request: Request) -> dict[str, Tensor]:
    return {t.name: t for t in request.tensors}


def require_shape(name: str, got: tuple[int, ...] | None, expected: tuple[int, ...]) -> None:
    if got != expected:
        raise BadInput(f"tensor {name!r} must have shape {expected}, got {got}")


def decoded(tensor: Tensor) -> np.ndarray:
    """`decode_tensor`, its errors (e.g. a payload that does not fit the shape) as BadInput, and
    NaN or infinite values refused: no model answers them meaningfully. Only float encodings
    can carry them (bits, unit8 and the checked int8 scale cannot), so only those are scanned."""
    try:
        values = decode_tensor(tensor)
    except DdnnError as exc:
        raise BadInput(str(exc)) from exc
    if tensor.encoding in _FLOATS and not np.isfinite(values).all():
        raise BadInput(f"tensor {tensor.name!r} has NaN or infinite values")
    return values


_FLOATS = frozenset({Encoding.FLOAT32, Encoding.FLOAT16})


def check_size(payload: bytes, limit: int) -> None:
    """Refuse a message longer than the largest request the tier accepts, before decoding it:
    decoding copies the payload and its tensors, so a 50 MB message cost a server 2 GB."""
    if len(payload) > limit:
        raise BadInput(f"a request of {len(payload)} bytes; the largest accepted is {limit}")


def request_limit(shapes: Sequence[tuple[int, ...]]) -> int:
    """Bytes of the largest request for sections whose 'x' has these shapes: 'x' and a
    'present' mask [D], both float32 (the widest encoding), plus the frame's fixed fields and
    its two longest possible names (see docs/protocol.md)."""
    widest = max(math.prod(shape) + shape[0] for shape in shapes)
    return 4 * widest + 1024


def server_inputs(
    request: Request, expected: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A server request's 'x' [*expected] and its 'present' mask [D] (bool) when sent. Shapes
    are checked as declared, before anything is decoded; other tensors are ignored."""
    tensors = tensors_by_name(request)
    if "x" not in tensors:
        raise BadInput(f"request has tensors {sorted(tensors)}; it needs 'x'")
    if tensors["x"].shape != expected:
        raise BadInput(
            f"tensor 'x' has shape {tensors['x'].shape}; section {request.section} of "
            f"{request.model} v{request.model_version} expects {expected}"
        )
    mask = tensors.get("present")
    if mask is not None:
        require_shape("present", mask.shape, (expected[0],))
    x = decoded(tensors["x"])
    if mask is None:
        return x, None
    present = decoded(mask) > 0
    if not present.any():
        raise BadInput("'present' marks no device as present")
    return x, present


def check_device_report(
    request: Request,
    *,
    version: int,
    devices: Sequence[str],
    row: tuple[int, ...],
    classes: int,
) -> None:
    """A device's report to the edge: its scores [classes] and/or its features 'x' [1, *row]
    (section 1), or its raw view 'x' (section 0), from one of `devices`, for model `version`."""
    if request.model_version != version:
        raise UnknownModel(
            f"model {request.model} v{request.model_version} is not served by this edge "
            f"(it has v{version})"
        )
    if request.device_id not in devices:
        raise BadInput(f"unknown device {request.device_id!r}; this edge fuses {list(devices)}")
    tensors = tensors_by_name(request)
    if request.section == 1 and not tensors.keys() & {"x", "scores"}:
        raise BadInput("a device's request needs tensor 'scores' (and later 'x')")
    if request.section == 0 or "x" in tensors:
        x = tensors.get("x")
        require_shape("x", tuple(x.shape) if x is not None else None, (1, *row))
    if "scores" in tensors:
        require_shape("scores", tuple(tensors["scores"].shape), (classes,))
