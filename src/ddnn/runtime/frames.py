"""The three frames tiers exchange (`Request`, `Reply`, `ErrorFrame`) and their codes.

Constructors check every field, so a frame that exists can be encoded; `ddnn.runtime.codec`
turns frames into bytes and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ddnn.runtime.fields import FrameError, _enum, _f32, _int, _tuple_of, _uint, check_identifier
from ddnn.runtime.tensors import Tensor

MAX_MESSAGE_BYTES = 1024


class Kind(IntEnum):
    """Frame kind (byte 3)."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3


class Status(IntEnum):
    """Reply status and error codes; values >= 16 are errors."""

    OK = 0
    DEGRADED = 1  # answered, but e.g. fused without some devices (see missing_devices)
    FEATURES = 2  # not answered yet: the edge's fused exit is unsure, send this frame's features
    MALFORMED = 16  # the request frame could not be decoded
    UNKNOWN_MODEL = 17  # model name or version not served here
    BAD_INPUT = 18  # tensors do not match what the section expects
    OVERLOADED = 19  # shed: the server queue is too long
    TIMEOUT = 20  # gave up waiting (devices, upstream tier)
    INTERNAL = 21  # a bug on the answering side

    @property
    def is_error(self) -> bool:
        return self >= 16


@dataclass(frozen=True, slots=True)
class Request:
    """Tensors of one event (`frame_id`) from one device, for section `section` of a model."""

    request_id: int
    model: str
    model_version: int
    device_id: str
    frame_id: int
    section: int
    tensors: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_id", _uint("request_id", self.request_id, 64, low=1))
        check_identifier("model", self.model)
        object.__setattr__(self, "model_version", _uint("model_version", self.model_version, 16))
        check_identifier("device_id", self.device_id)
        object.__setattr__(self, "frame_id", _uint("frame_id", self.frame_id, 64))
        object.__setattr__(self, "section", _uint("section", self.section, 8))
        object.__setattr__(self, "tensors", _tuple_of("tensors", self.tensors, Tensor, 1))


@dataclass(frozen=True, slots=True)
class Reply:
    """Outcome of a request: the exit taken, its confidence and where the time went."""

    request_id: int
    status: Status
    predicted: int  # class index, -1 when none
    exit_index: int  # 255 when none
    entropy: float  # normalized entropy of the exit taken, in [0, 1]
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    missing_devices: tuple[str, ...] = ()
    tensors: tuple[Tensor, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_id", _uint("request_id", self.request_id, 64, low=1))
        object.__setattr__(self, "status", _enum(Status, self.status, "status"))
        predicted = _int("predicted", self.predicted, -(1 << 31), (1 << 31) - 1)
        object.__setattr__(self, "predicted", predicted)
        object.__setattr__(self, "exit_index", _uint("exit_index", self.exit_index, 8))
        for name in ("entropy", "queue_ms", "compute_ms"):
            object.__setattr__(self, name, _f32(name, getattr(self, name)))
        missing = _tuple_of("missing_devices", self.missing_devices, str, 0)
        for device in missing:
            check_identifier("missing device id", device)
        object.__setattr__(self, "missing_devices", missing)
        object.__setattr__(self, "tensors", _tuple_of("tensors", self.tensors, Tensor, 0))


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """A request failed; `request_id` is None when it could not be read."""

    request_id: int | None
    code: Status
    message: str

    def __post_init__(self) -> None:
        if self.request_id is not None:
            object.__setattr__(self, "request_id", _uint("request_id", self.request_id, 64, 1))
        code = _enum(Status, self.code, "error code")
        if not code.is_error:
            raise FrameError(f"error frames need an error code (>= 16), got {code.name}")
        object.__setattr__(self, "code", code)
        if not isinstance(self.message, str):
            raise FrameError(f"message must be a string, got {type(self.message).__name__}")
        # Never fail to report an error because of its text: repair and truncate instead.
        raw = self.message.encode("utf-8", "replace")[:MAX_MESSAGE_BYTES]
        object.__setattr__(self, "message", raw.decode("utf-8", "ignore"))


Frame = Request | Reply | ErrorFrame


def frame_name(frame: Frame) -> str:
    """'request', 'reply' or 'error', for log messages."""
    return {Request: "request", Reply: "reply", ErrorFrame: "error"}[type(frame)]
