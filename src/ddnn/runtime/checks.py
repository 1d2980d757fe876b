"""Request checks shared by the server and the edge, raising typed errors.

Each error kind carries the wire `Status` its error reply gets, so a tier answers with
`exc.status` and never guesses the kind from the message text. The checks only read frames
(numpy at most): no transport, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ddnn.errors import DdnnError
from ddnn.runtime.wire import (
    TOPIC_PREFIX,
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
    """`decode_tensor`, its errors (e.g. a payload that does not fit the shape) as BadInput."""
    try:
        return decode_tensor(tensor)
    except DdnnError as exc:
        raise BadInput(str(exc)) from exc


def server_inputs(
    request: Request, expected: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A server request's 'x' [*expected] and its 'present' mask [D] (bool) when sent."""
    tensors = {name: decoded(t) for name, t in tensors_by_name(request).items()}
    if "x" not in tensors:
        raise BadInput(f"request has tensors {sorted(tensors)}; it needs 'x'")
    x = tensors["x"]
    if tuple(x.shape) != expected:
        raise BadInput(
            f"tensor 'x' has shape {tuple(x.shape)}; section {request.section} of "
            f"{request.model} v{request.model_version} expects {expected}"
        )
    present = tensors.get("present")
    if present is not None:
        require_shape("present", tuple(present.shape), (expected[0],))
        present = present > 0
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
