"""Checks of frame fields, shared by the frame constructors, the decoder and the topic helpers.

Every check raises `FrameError` naming the field and the valid range, so a bad value never
reaches the wire. They run on every field of every message: keep them to a few comparisons.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
from enum import IntEnum
from typing import Any, TypeVar

from ddnn.errors import DdnnError
from ddnn.names import IDENTIFIER as _ID

_F32 = struct.Struct("<f")
_F32_MAX = _F32.unpack(b"\xff\xff\x7f\x7f")[0]  # float32's largest finite value, without numpy

EnumT = TypeVar("EnumT", bound=IntEnum)


class FrameError(DdnnError):
    """Bytes that are not a valid ddnn frame, or a frame that cannot be encoded."""


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
