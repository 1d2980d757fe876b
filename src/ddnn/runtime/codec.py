"""Versioned little-endian binary frames: `encode_frame` / `decode_frame` and the byte layouts.

Text formats would triple the size of the small binarized tensors DDNN sends from devices, so
frames are packed with `struct`; docs/protocol.md describes every byte. Decoding is strict and
canonical: any input that `encode_frame` could not have produced raises `FrameError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import TypeVar

from ddnn.names import IDENTIFIER as _ID
from ddnn.runtime.fields import FrameError, _enum, _members, _tuple_of, _uint, check_identifier
from ddnn.runtime.frames import (
    MAX_MESSAGE_BYTES,
    ErrorFrame,
    Frame,
    Kind,
    Reply,
    Request,
    Status,
    frame_name,
)
from ddnn.runtime.tensors import _ENCODING_NAMES, MAX_NDIM, Encoding, Tensor, payload_size

MAGIC = b"DN"
VERSION = 2  # 2: status FEATURES (an edge asks a device for its features)

_HEAD = struct.Struct("<2sBB")  # magic, version, kind
_REQUEST = struct.Struct("<QQHB")  # request_id, frame_id, model_version, section
_REPLY = struct.Struct("<QBBifff")  # request_id, status, exit, predicted, entropy, queue, compute
_ERROR = struct.Struct("<QBH")  # request_id, code, message length
# every kind's body starts with the u64 request id: where a relay finds it without decoding
REQUEST_ID_BYTES = slice(_HEAD.size, _HEAD.size + 8)
_TENSOR = struct.Struct("<BB")  # encoding, ndim
_REQUEST_START = struct.Struct("<2sBBQQHBB")  # _HEAD, _REQUEST and the model name's length
_ANSWER = struct.Struct("<2sBBQBBifff2s")  # _HEAD, _REPLY, no missing devices and no tensors
_DIMS = [struct.Struct(f"<{n}I") for n in range(MAX_NDIM + 1)]  # a tensor's shape, by ndim

FrameT = TypeVar("FrameT")


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
        return _ANSWER.pack(
            MAGIC, VERSION, Kind.REPLY, request_id, Status.OK, exit_index, predicted, entropy,
            queue_ms, compute_ms, b"\x00\x00",
        )  # fmt: skip
    except (struct.error, OverflowError, TypeError, ValueError) as exc:
        raise FrameError(f"cannot encode the answer to request {request_id!r}: {exc}") from None


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


def _read_request_fast(data: bytes) -> Request | None:
    """A well-formed request read in one pass without the checked reader's per-field calls, or
    None for anything else. A server decodes one per message, and on a cache-cold request those
    calls cost 60-80 us (docs/runtime.md). `_read_request` stays the definition: this accepts
    only frames it accepts and builds the same objects; whatever it declines goes to the
    checked reader, which names the fault."""
    try:
        magic, version, kind, request_id, frame_id, model_version, section, n = (
            _REQUEST_START.unpack_from(data)
        )
        if magic != MAGIC or version != VERSION or kind != Kind.REQUEST or not request_id:
            return None
        pos = _REQUEST_START.size
        model = data[pos : pos + n].decode()
        pos += n
        n = data[pos]
        device_id = data[pos + 1 : pos + 1 + n].decode()
        pos += 1 + n
        if not (_ID.fullmatch(model) and _ID.fullmatch(device_id)):
            return None
        tensors = []
        encodings = _members(Encoding)
        count = data[pos]
        pos += 1
        for _ in range(count):
            n = data[pos]
            name = data[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            encoding, ndim = encodings.get(data[pos]), data[pos + 1]
            if not name or encoding is None or ndim > MAX_NDIM:
                return None
            shape = _DIMS[ndim].unpack_from(data, pos + 2)
            pos += 2 + 4 * ndim
            n = payload_size(encoding, math.prod(shape))
            tensor = _decoded(Tensor, name, encoding, shape, data[pos : pos + n])
            pos += n
            tensor._check_payload()
            tensors.append(tensor)
        if pos != len(data) or not tensors:
            return None
    except (struct.error, IndexError, UnicodeDecodeError, FrameError):
        return None
    return _decoded(
        Request, request_id, model, model_version, device_id, frame_id, section, tuple(tensors)
    )


def _read_answer_fast(data: bytes) -> Reply | None:
    """A reply without missing devices or tensors (what a server sends per request), or None
    for anything else; as `_read_request_fast` is to `_read_request`, this is to `_read_reply`."""
    if len(data) != _ANSWER.size:
        return None
    magic, version, kind, request_id, status, exit_index, predicted, *times, tail = _ANSWER.unpack(
        data
    )
    status = _members(Status).get(status)
    if (
        magic != MAGIC or version != VERSION or kind != Kind.REPLY or not request_id
        or status is None or tail != b"\x00\x00"
    ):  # fmt: skip
        return None
    return _decoded(Reply, request_id, status, predicted, exit_index, *times, (), ())


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame; raises FrameError (and nothing else) for any malformed input. The two
    frames of every offload (request, answer) are first tried without the checked reader."""
    if type(data) is bytes:
        fast = _read_request_fast(data) if data[3:4] == b"\x01" else _read_answer_fast(data)
        if fast is not None:
            return fast
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
