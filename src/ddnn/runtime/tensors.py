"""Tensors on the wire: how an array's values are packed (`Encoding`), and the checked `Tensor`
that frames carry.

A payload's size follows from its shape and encoding, so it is never sent; docs/protocol.md
gives each encoding's bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ddnn.runtime.fields import _F32_MAX, FrameError, _enum, _uint, _utf8

MAX_NDIM = 8
# an int8 payload's leading scale. Defined here, not imported: CPython compiles a method call on
# an imported name without its LOAD_METHOD fast path, and this one runs on every int8 tensor.
_F32 = struct.Struct("<f")
_INT8_MAX_SCALE = _F32_MAX / 127  # larger scales overflow float32 when decoded
# [256, 8] float32: byte -> its bits MSB first as -1.0 / +1.0
_BITS_TABLE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1) * np.float32(2) - 1


class Encoding(IntEnum):
    """How a tensor's values are packed; smaller encodings trade accuracy for bytes."""

    FLOAT32 = 1
    FLOAT16 = 2
    INT8 = 3  # float32 scale, then one int8 per value: value = q * scale
    BITS = 4  # values in {-1, +1}, 1 bit each, MSB first, 1 means +1
    UNIT8 = 5  # values in [0, 1] (image pixels), one byte each: value = q / 255


_ENCODING_NAMES = {e: e.name.lower() for e in Encoding}  # for messages, without enum lookups


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
        rows = _BITS_TABLE.take(np.frombuffer(raw, dtype=np.uint8), axis=0)  # [bytes, 8]; `take`
        # costs half of indexing with [] (1.6-1.9 against 3.4-4 us hot, 36-39 against 44-47 cold)
        if not tensor.count % 8:  # no padding bits (a device's features): one call fewer
            return rows.reshape(tensor.shape)
        flat = rows.reshape(-1)[: tensor.count]
    return flat.reshape(tensor.shape)
