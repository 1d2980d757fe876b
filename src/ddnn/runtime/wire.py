"""Versioned little-endian binary frames carried between tiers, and the MQTT topic scheme.

Text formats would triple the size of the small binarized tensors DDNN sends from devices, so
frames are packed with `struct`; docs/protocol.md describes every byte. Decoding is strict and
canonical: any input that `encode_frame` could not have produced raises `FrameError`.
"""

from __future__ import annotations

import functools
import math
import operator
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import numpy as np

from ddnn.errors import DdnnError
from ddnn.names import IDENTIFIER as _ID

MAGIC = b"DN"
VERSION = 2  # 2: status FEATURES (an edge asks a device for its features)
MAX_NDIM = 8
MAX_MESSAGE_BYTES = 1024
TOPIC_PREFIX = "dd"
SERVER_GROUP = "ddnn-servers"  # the shared subscription the servers of a site answer from

_PREFIX = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_HEAD = struct.Struct("<2sBB")  # magic, version, kind
_REQUEST = struct.Struct("<QQHB")  # request_id, frame_id, model_version, section
_REPLY = struct.Struct("<QBBifff")  # request_id, status, exit, predicted, entropy, queue, compute
_ERROR = struct.Struct("<QBH")  # request_id, code, message length
# every kind's body starts with the u64 request id: where a relay finds it without decoding
REQUEST_ID_BYTES = slice(_HEAD.size, _HEAD.size + 8)
_TENSOR = struct.Struct("<BB")  # encoding, ndim
_DIMS = [struct.Struct(f"<{n}I") for n in range(MAX_NDIM + 1)]  # a tensor's shape, by ndim
_F32 = struct.Struct("<f")
_F32_MAX = float(np.finfo(np.float32).max)
_INT8_MAX_SCALE = _F32_MAX / 127  # larger scales overflow float32 when decoded
# [256, 8] float32: byte -> its bits MSB first as -1.0 / +1.0
_BITS_TABLE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1) * np.float32(2) - 1


class FrameError(DdnnError):
    """Bytes that are not a valid ddnn frame, or a frame that cannot be encoded."""


class Kind(IntEnum):
    """Frame kind (byte 3)."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3


class Encoding(IntEnum):
    """How a tensor's values are packed; smaller encodings trade accuracy for bytes."""

    FLOAT32 = 1
    FLOAT16 = 2
    INT8 = 3  # float32 scale, then one int8 per value: value = q * scale
    BITS = 4  # values in {-1, +1}, 1 bit each, MSB first, 1 means +1
    UNIT8 = 5  # values in [0, 1] (image pixels), one byte each: value = q / 255


_ENCODING_NAMES = {e: e.name.lower() for e in Encoding}  # for messages, without enum lookups


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


FrameT = TypeVar("FrameT")
EnumT = TypeVar("EnumT", bound=IntEnum)


@functools.cache
def _members(cls: type[EnumT]) -> dict[int, EnumT]:
    return {m.value: m for m in cls}


def _enum(cls: type[EnumT], value: Any, what: str) -> EnumT:
    """A table lookup first: `cls(value)` costs a microsecond, on every field of every frame."""
    try:
        return _members(cls)[value]
    except (KeyError, TypeError):  # e.g. a 0-d numpy array, which cls() accepts
        pass
    try:
        return cls(value)
    except (ValueError, TypeError):
        known = ", ".join(f"{m.value}={m.name.lower()}" for m in cls)
        raise FrameError(f"unknown {what} {value!r} (known: {known})") from None


def parse_encoding(encoding: Encoding | str | int) -> Encoding:
    """Accept an Encoding, its name ('float32', 'float16', 'int8', 'bits', 'unit8') or its
    number."""
    if isinstance(encoding, str):
        try:
            return Encoding[encoding.upper()]
        except KeyError:
            names = ", ".join(m.name.lower() for m in Encoding)
            raise FrameError(f"unknown tensor encoding {encoding!r}; use one of {names}") from None
    return _enum(Encoding, encoding, "tensor encoding")


# --- field validation (shared by constructors and the decoder) -------------------------------


def _int(what: str, value: object, low: int, high: int) -> int:
    """Accept Python and numpy integers (not bools or floats) in low..high."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        raise FrameError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return number


def _uint(what: str, value: object, bits: int, low: int = 0) -> int:
    return _int(what, value, low, (1 << bits) - 1)


def check_identifier(what: str, value: object) -> None:
    """Model names and device ids appear in topics, so they use a topic-safe alphabet."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise FrameError(
            f"{what} {value!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _utf8(what: str, value: object, limit: int) -> bytes:
    if not isinstance(value, str):
        raise FrameError(f"{what} must be a string, got {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError(f"{what} {value!r} is not valid Unicode text") from None
    if len(raw) > limit:
        raise FrameError(f"{what} is {len(raw)} bytes of UTF-8; the limit is {limit}")
    return raw


def _f32(what: str, value: object) -> float:
    """Round to float32 so a frame equals its own decode."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or isinstance(value, bool | str | bytes):
        raise FrameError(f"{what} must be a number, got {value!r}")
    if math.isfinite(number) and abs(number) > _F32_MAX:
        raise FrameError(f"{what}={number} does not fit in a float32")
    return float(_F32.unpack(_F32.pack(number))[0])


def _tuple_of(what: str, items: object, cls: type, low: int) -> tuple:
    items = tuple(items) if isinstance(items, list | tuple) else items
    if not isinstance(items, tuple) or not all(isinstance(i, cls) for i in items):
        raise FrameError(f"{what} must be a list of {cls.__name__}")
    if not low <= len(items) <= 255:
        raise FrameError(f"{what} needs {low}..255 entries, got {len(items)}")
    return items


# --- tensors ---------------------------------------------------------------------------------


def payload_size(encoding: Encoding, count: int) -> int:
    """Payload bytes of `count` values: fixed by shape and encoding, so not sent on the wire."""
    if encoding is Encoding.FLOAT32:
        return 4 * count
    if encoding is Encoding.FLOAT16:
        return 2 * count
    if encoding is Encoding.INT8:
        return 4 + count
    if encoding is Encoding.UNIT8:
        return count
    return (count + 7) // 8


@dataclass(frozen=True, slots=True)
class Tensor:
    """One encoded tensor; `payload` is the wire bytes (int8 includes its leading scale)."""

    name: str
    encoding: Encoding
    shape: tuple[int, ...]
    payload: bytes

    def __post_init__(self) -> None:
        if not _utf8("tensor name", self.name, 255):
            raise FrameError("tensor name must not be empty")
        object.__setattr__(self, "encoding", _enum(Encoding, self.encoding, "tensor encoding"))
        shape = tuple(self.shape) if isinstance(self.shape, list | tuple) else None
        if shape is None or len(shape) > MAX_NDIM:
            raise FrameError(f"tensor shape must be a tuple of at most {MAX_NDIM} dimensions")
        shape = tuple(_uint("tensor dimension", dim, 32) for dim in shape)
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.payload, bytes):
            raise FrameError(f"tensor payload must be bytes, got {type(self.payload).__name__}")
        expected = payload_size(self.encoding, self.count)
        if len(self.payload) != expected:
            raise FrameError(
                f"tensor {self.name!r} of shape {shape} as {self.encoding.name.lower()} needs "
                f"{expected} payload bytes, got {len(self.payload)}"
            )
        self._check_payload()

    def _check_payload(self) -> None:
        if self.encoding is Encoding.INT8:
            scale = _F32.unpack_from(self.payload)[0]
            if not 0 <= scale <= _INT8_MAX_SCALE:  # also rejects NaN
                raise FrameError(
                    f"tensor {self.name!r} has int8 scale {scale}; need 0..{_INT8_MAX_SCALE:.4g}"
                )
            if b"\x80" in self.payload[4:]:  # symmetric range: the encoder never emits -128
                raise FrameError(f"tensor {self.name!r} has int8 value -128; the range is ±127")
        spare = -self.count % 8  # unused low bits of the last byte
        if self.encoding is Encoding.BITS and spare and self.payload[-1] & ((1 << spare) - 1):
            raise FrameError(f"tensor {self.name!r} has non-zero padding bits")

    @property
    def count(self) -> int:
        """Number of values (product of the shape)."""
        return math.prod(self.shape)


def encode_tensor(
    array: np.ndarray, encoding: Encoding | str = Encoding.FLOAT32, *, name: str = "x"
) -> Tensor:
    """Pack a numeric array; raises DdnnError when the values do not fit the encoding."""
    enc = parse_encoding(encoding)
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise FrameError(f"tensor {name!r} has dtype {a.dtype}; expected a numeric array")
    with np.errstate(over="ignore"):  # out-of-range values become inf, checked below
        a = a.astype(np.float32)
        half = a.astype("<f2") if enc is Encoding.FLOAT16 else a
    if enc is Encoding.FLOAT32:
        payload = a.astype("<f4").tobytes()
    elif enc is Encoding.FLOAT16:
        if np.any(np.isinf(half) & np.isfinite(a)):
            raise FrameError(f"tensor {name!r} exceeds the float16 range (65504); use float32")
        payload = half.tobytes()
    elif enc is Encoding.INT8:
        payload = _quantize_int8(a, name)
    elif enc is Encoding.UNIT8:
        if not np.all((a >= 0) & (a <= 1)):  # also rejects NaN
            raise FrameError(f"tensor {name!r}: 'unit8' needs values in [0, 1], e.g. pixels / 255")
        payload = np.rint(a * 255).astype(np.uint8).tobytes()
    else:
        if not np.all((a == 1) | (a == -1)):
            raise FrameError(
                f"tensor {name!r}: 'bits' needs values in {{-1, +1}}; binarize first, "
                "e.g. np.where(x >= 0, 1, -1)"
            )
        payload = np.packbits(a.reshape(-1) > 0).tobytes()
    return Tensor(name, enc, a.shape, payload)


def _quantize_int8(a: np.ndarray, name: str) -> bytes:
    """Symmetric per-tensor quantization: the largest magnitude maps to 127."""
    if not np.all(np.isfinite(a)):
        raise FrameError(f"tensor {name!r} has NaN or infinite values; int8 cannot carry them")
    peak = float(np.max(np.abs(a))) if a.size else 0.0
    scale = np.float32(peak / 127.0)
    if float(scale) > _INT8_MAX_SCALE:  # rounded up past the limit: only near float32's maximum
        scale = np.nextafter(scale, np.float32(0))
    if scale == 0:
        scale = np.float32(1.0)
    q = np.clip(np.rint(a / scale), -127, 127).astype(np.int8)
    return _F32.pack(scale) + q.tobytes()


def decode_tensor(tensor: Tensor) -> np.ndarray:
    """Values as a new float32 array of `tensor.shape` (bits become -1.0 / +1.0)."""
    enc, raw = tensor.encoding, tensor.payload
    if enc is Encoding.FLOAT32:
        flat = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif enc is Encoding.FLOAT16:
        flat = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif enc is Encoding.INT8:
        scale = np.float32(_F32.unpack_from(raw)[0])
        flat = np.frombuffer(raw, dtype=np.int8, offset=4).astype(np.float32) * scale
    elif enc is Encoding.UNIT8:
        flat = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    else:  # one table lookup per byte: fewer numpy calls than unpack, cast and rescale
        flat = _BITS_TABLE[np.frombuffer(raw, dtype=np.uint8)].reshape(-1)[: tensor.count]
    return flat.reshape(tensor.shape)


# --- frames ----------------------------------------------------------------------------------


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


def _str8(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def _tensor_parts(tensors: tuple[Tensor, ...]) -> list[bytes]:
    parts = [bytes((len(tensors),))]
    for t in tensors:
        ndim = len(t.shape)
        parts += [
            _str8(t.name.encode()),
            _TENSOR.pack(t.encoding, ndim),
            struct.pack(f"<{ndim}I", *t.shape),
            t.payload,
        ]
    return parts


def _reply_head(
    request_id: int,
    status: int,
    exit_index: int,
    predicted: int,
    entropy: float,
    queue_ms: float,
    compute_ms: float,
) -> bytes:
    """Common header and the fixed reply fields."""
    fields = _REPLY.pack(request_id, status, exit_index, predicted, entropy, queue_ms, compute_ms)
    return _HEAD.pack(MAGIC, VERSION, Kind.REPLY) + fields


def encode_answer(
    request_id: int,
    predicted: int,
    exit_index: int,
    entropy: float,
    queue_ms: float,
    compute_ms: float,
) -> bytes:
    """The bytes of `Reply(request_id, Status.OK, ...)` (no missing devices, no tensors) without
    building the Reply: the server sends one per request, and the constructor's checks cost more
    than the packing. The server's values are in range by construction (an id it decoded, an
    exit and class from its executor); anything else raises FrameError, never a bad frame."""
    try:
        if request_id < 1:
            raise ValueError("request ids start at 1")
        head = _reply_head(
            request_id, Status.OK, exit_index, predicted, entropy, queue_ms, compute_ms
        )
    except (struct.error, OverflowError, TypeError, ValueError) as exc:
        raise FrameError(f"cannot encode the answer to request {request_id!r}: {exc}") from None
    return head + b"\x00\x00"  # no missing devices, no tensors


def encode_frame(frame: Frame) -> bytes:
    """Serialize a frame; its fields were validated when it was constructed."""
    if isinstance(frame, Request):
        parts = [
            _HEAD.pack(MAGIC, VERSION, Kind.REQUEST),
            _REQUEST.pack(frame.request_id, frame.frame_id, frame.model_version, frame.section),
            _str8(frame.model.encode()),
            _str8(frame.device_id.encode()),
            *_tensor_parts(frame.tensors),
        ]
    elif isinstance(frame, Reply):
        parts = [
            _reply_head(
                frame.request_id,
                frame.status,
                frame.exit_index,
                frame.predicted,
                frame.entropy,
                frame.queue_ms,
                frame.compute_ms,
            ),
            bytes((len(frame.missing_devices),)),
            *(_str8(d.encode()) for d in frame.missing_devices),
            *_tensor_parts(frame.tensors),
        ]
    elif isinstance(frame, ErrorFrame):
        message = frame.message.encode()
        parts = [
            _HEAD.pack(MAGIC, VERSION, Kind.ERROR),
            _ERROR.pack(frame.request_id or 0, frame.code, len(message)),
            message,
        ]
    else:
        raise FrameError(f"cannot encode {type(frame).__name__}; expected Request, Reply or Error")
    return b"".join(parts)


class _Reader:
    """Bounds-checked cursor: every read either succeeds or raises FrameError. What a read is
    for is a %-format filled in only when it fails: formatting it for every field of every
    message cost more than the reads."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.pos = 0

    def _advance(self, n: int, what: str, args: tuple) -> int:
        """Claim the next n bytes; returns where they start."""
        start = self.pos
        left = len(self.data) - start
        if n > left:
            raise FrameError(
                f"truncated frame: {what % args} needs {n} bytes at offset {start}, only {left} "
                "left"
            )
        self.pos = start + n
        return start

    def take(self, n: int, what: str, *args: object) -> bytes:
        start = self._advance(n, what, args)
        return bytes(self.data[start : start + n])

    def unpack(self, layout: struct.Struct, what: str, *args: object) -> tuple:
        return layout.unpack_from(self.data, self._advance(layout.size, what, args))

    def u8(self, what: str, *args: object) -> int:
        return self.data[self._advance(1, what, args)]

    def text(self, what: str, *args: object, length: int | None = None) -> str:
        raw = self.take(self.u8(what + " length", *args) if length is None else length, what, *args)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(f"{what % args} is not valid UTF-8 ({exc.reason})") from None

    def tensors(self) -> list[Tensor]:
        return [self.tensor(i) for i in range(self.u8("tensor count"))]

    def tensor(self, index: int) -> Tensor:
        name = self.text("tensor %d name", index)
        enc_raw, ndim = self.unpack(_TENSOR, "tensor %r header", name)
        encoding = _members(Encoding).get(enc_raw) or _enum(
            Encoding, enc_raw, f"encoding of tensor {name!r}"
        )
        if ndim > MAX_NDIM:
            raise FrameError(f"tensor {name!r} claims {ndim} dimensions; the limit is {MAX_NDIM}")
        shape = self.unpack(_DIMS[ndim], "tensor %r shape", name)
        size = payload_size(encoding, math.prod(shape))
        if not name:
            raise FrameError(f"tensor {index} has an empty name")
        payload = self.take(
            size, "payload of tensor %r %s %s", name, shape, _ENCODING_NAMES[encoding]
        )
        tensor = _decoded(Tensor, name, encoding, shape, payload)
        tensor._check_payload()
        return tensor


def _decoded(cls: type[FrameT], *values: object) -> FrameT:
    """Build a frame or tensor from decoded fields without its constructor's checks: the readers
    below check what the byte layout does not already guarantee (struct formats bound every
    integer, float fields are float32 already, payload sizes follow from the shape), and these
    checks are most of the decoding time on every message."""
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):  # type: ignore[attr-defined]
        object.__setattr__(obj, name, value)
    return obj


def _read_request(r: _Reader) -> Request:
    request_id, frame_id, model_version, section = r.unpack(_REQUEST, "request header")
    model = r.text("model name")
    check_identifier("model", model)
    device_id = r.text("device id")
    check_identifier("device_id", device_id)
    tensors = _tuple_of("tensors", r.tensors(), Tensor, 1)
    return _decoded(
        Request, _uint("request_id", request_id, 64, low=1), model, model_version, device_id,
        frame_id, section, tensors,
    )  # fmt: skip


def _read_reply(r: _Reader) -> Reply:
    request_id, status, exit_index, predicted, entropy, queue_ms, compute_ms = r.unpack(
        _REPLY, "reply header"
    )
    missing = tuple(r.text("missing device id") for _ in range(r.u8("missing device count")))
    for device in missing:
        check_identifier("missing device id", device)
    return _decoded(
        Reply,
        _uint("request_id", request_id, 64, low=1),
        _enum(Status, status, "status"),
        predicted,
        exit_index,
        entropy,
        queue_ms,
        compute_ms,
        missing,
        tuple(r.tensors()),
    )


def _read_error(r: _Reader) -> ErrorFrame:
    request_id, code, length = r.unpack(_ERROR, "error header")
    if length > MAX_MESSAGE_BYTES:
        raise FrameError(f"error message of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
    message = r.text("error message", length=length)
    return ErrorFrame(request_id or None, _enum(Status, code, "error code"), message)


_READERS: dict[Kind, Callable[[_Reader], Frame]] = {
    Kind.REQUEST: _read_request,
    Kind.REPLY: _read_reply,
    Kind.ERROR: _read_error,
}


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame; raises FrameError (and nothing else) for any malformed input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError(f"frames are bytes, got {type(data).__name__}")
    r = _Reader(data.tobytes() if isinstance(data, memoryview) else data)  # any layout
    magic, version, kind = r.unpack(_HEAD, "frame header")
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}: not a ddnn frame (expected {MAGIC!r})")
    if version != VERSION:
        raise FrameError(
            f"unsupported protocol version {version}; this ddnn speaks version {VERSION}: "
            "run the same ddnn release on every tier"
        )
    frame = _READERS[_enum(Kind, kind, "frame kind")](r)
    if r.pos != len(r.data):
        extra = len(r.data) - r.pos
        raise FrameError(f"{extra} trailing bytes after a complete {frame_name(frame)} frame")
    return frame


def frame_name(frame: Frame) -> str:
    """'request', 'reply' or 'error', for log messages."""
    return {Request: "request", Reply: "reply", ErrorFrame: "error"}[type(frame)]


# --- topics ----------------------------------------------------------------------------------
# Topics are sent with every PUBLISH, so they are short: dd/q/<model>/<section>/<device> for
# requests and dd/a/<device> for replies and errors.


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise DdnnError(f"topic prefix {prefix!r} is invalid: use levels of [A-Za-z0-9._-]")


def request_topic(model: str, section: int, device_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where `device_id` publishes requests for `section` of `model`."""
    _check_prefix(prefix)
    check_identifier("model", model)
    section = _uint("section", section, 8)
    check_identifier("device_id", device_id)
    return f"{prefix}/q/{model}/{section}/{device_id}"


def topic_of(request: Request, *, prefix: str = TOPIC_PREFIX) -> str:
    """The topic `request` belongs on; its fields were checked when it was built or decoded,
    so a receiver compares this to the topic it arrived on instead of parsing that topic."""
    return f"{prefix}/q/{request.model}/{request.section}/{request.device_id}"


def reply_topic(device_id: str, *, prefix: str = TOPIC_PREFIX) -> str:
    """Where replies and errors for `device_id` are published."""
    _check_prefix(prefix)
    check_identifier("device_id", device_id)
    return f"{prefix}/a/{device_id}"


def request_filter(
    model: str, section: int, *, group: str | None = None, prefix: str = TOPIC_PREFIX
) -> str:
    """Filter for requests of every device; with `group`, a `$share` filter so that each
    request reaches exactly one of the group's workers."""
    topic = request_topic(model, section, "x", prefix=prefix)
    topic_filter = topic[: -len("x")] + "+"
    if group is None:
        return topic_filter
    check_identifier("group", group)
    return f"$share/{group}/{topic_filter}"


def parse_request_topic(topic: str, *, prefix: str = TOPIC_PREFIX) -> tuple[str, int, str]:
    """Inverse of `request_topic`: (model, section, device_id)."""
    _check_prefix(prefix)
    head = f"{prefix}/q/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or not re.fullmatch(r"[0-9]{1,3}", parts[1]):
        raise DdnnError(f"{topic!r} is not a request topic ({head}<model>/<section>/<device>)")
    model, section, device_id = parts[0], _uint("section", int(parts[1]), 8), parts[2]
    check_identifier("model", model)
    check_identifier("device_id", device_id)
    return model, section, device_id
