"""The messages of a live rollout: an operator's commands and the servers' answers, version
announcements, the edge's switch frames, fetch requests and the chunks that answer them.

Control messages are small and rare, so they are JSON (read with `config.from_dict`, which names
a bad field); a chunk is `MAGIC`, a 4-byte header length, a JSON header and raw bytes. What a
fetch returns is a bundle: the version's spec.json and the weight files asked for. Three hashes
guard it: the bundle's (the transfer), the spec's (against the announcement the device acted
on) and each weight file's (against the spec), so a device never runs bytes the server did not
vouch for.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, TypeVar

from ddnn.config import from_dict, to_dict
from ddnn.errors import DdnnError

DEPLOY, ROLLBACK, STATUS = "deploy", "rollback", "status"
ACTIONS = (DEPLOY, ROLLBACK, STATUS)
MAGIC = b"DDF1"  # a fetch chunk
_HEAD = struct.Struct("<4sI")

M = TypeVar("M")


class RolloutMessageError(DdnnError):
    """A control or fetch message that could not be read."""


@dataclass(frozen=True)
class Command:
    """An operator's command. deploy: `run` (a folder the server can read) or `model` +
    `version` (one it already knows); rollback: `model` (back to its previous version)."""

    id: str
    action: str
    run: str | None = None
    model: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise RolloutMessageError(f"unknown action {self.action!r}; valid: {ACTIONS}")


@dataclass(frozen=True)
class CommandReply:
    """A server's answer: done or refused (`message` says why), and what it serves now."""

    id: str
    ok: bool
    message: str
    server: str = ""
    current: dict[str, int] | None = None  # model -> the version devices are told to use
    served: tuple[str, ...] = ()  # 'name vN' of every loaded version
    known: tuple[int, ...] = ()  # the versions a deploy by number may name
    devices: dict[str, int] | None = None  # 'model/device' -> the version its last request named


@dataclass(frozen=True)
class Announcement:
    """The version of `model` devices should move to; `spec_sha256` pins its spec.json and
    `run` is the server's folder (for devices that read it from a shared disk)."""

    model: str
    version: int
    spec_sha256: str
    run: str


@dataclass(frozen=True)
class Switch:
    """From the edge: the devices of `model` use `version` from frame `frame_id` on."""

    model: str
    version: int
    frame_id: int


@dataclass(frozen=True)
class FetchRequest:
    """Ask for spec.json and the weight files `parts` of `model` v`version`."""

    id: str
    model: str
    version: int
    parts: tuple[str, ...]


@dataclass(frozen=True)
class ChunkHeader:
    """Chunk `index` of `count` of a bundle of `size` bytes whose SHA-256 is `sha256`; or, with
    `error`, why there is nothing to send."""

    id: str
    index: int = 0
    count: int = 0
    size: int = 0
    sha256: str = ""
    error: str = ""


def encode_message(message: Any) -> bytes:
    return json.dumps(to_dict(message), separators=(",", ":")).encode()


def decode_message(cls: type[M], payload: bytes) -> M:
    """The message of type `cls` in `payload`; RolloutMessageError names what is wrong."""
    try:
        doc = json.loads(payload.decode("utf-8"))
        return from_dict(cls, doc, cls.__name__)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RolloutMessageError(f"{cls.__name__}: not JSON: {exc}") from None
    except RolloutMessageError:
        raise
    except DdnnError as exc:
        raise RolloutMessageError(str(exc)) from None


def encode_chunk(header: ChunkHeader, data: bytes = b"") -> bytes:
    head = encode_message(header)
    return _HEAD.pack(MAGIC, len(head)) + head + data


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, bytes]:
    if len(payload) < _HEAD.size:
        raise RolloutMessageError(f"chunk of {len(payload)} bytes is too short")
    magic, head_len = _HEAD.unpack_from(payload)
    if magic != MAGIC or _HEAD.size + head_len > len(payload):
        raise RolloutMessageError("not a fetch chunk (bad magic or header length)")
    end = _HEAD.size + head_len
    return decode_message(ChunkHeader, payload[_HEAD.size : end]), payload[end:]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(request_id: str, bundle: bytes, size: int) -> list[bytes]:
    """The chunk messages carrying `bundle`, each holding at most `size` bytes of it."""
    if size < 1:
        raise DdnnError(f"chunk size must be positive, got {size}")
    count = max(1, -(-len(bundle) // size))
    digest = sha256_of(bundle)
    return [
        encode_chunk(
            ChunkHeader(request_id, i, count, len(bundle), digest),
            bundle[i * size : (i + 1) * size],
        )
        for i in range(count)
    ]


def pack_bundle(spec: bytes, files: dict[str, bytes]) -> bytes:
    """spec.json and part -> weight bytes, as one byte string (JSON index + concatenation)."""
    index = json.dumps({"spec": len(spec), "parts": {p: len(b) for p, b in files.items()}})
    head = index.encode()
    return struct.pack("<I", len(head)) + head + spec + b"".join(files.values())


def unpack_bundle(bundle: bytes) -> tuple[bytes, dict[str, bytes]]:
    """Inverse of `pack_bundle`: (spec.json bytes, part -> weight bytes)."""
    try:
        (head_len,) = struct.unpack_from("<I", bundle)
        index = json.loads(bundle[4 : 4 + head_len])
        at = 4 + head_len
        spec = bundle[at : at + int(index["spec"])]
        at += len(spec)
        files = {}
        for part, size in index["parts"].items():
            files[str(part)] = bundle[at : at + int(size)]
            at += int(size)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RolloutMessageError(f"damaged bundle: {exc}") from None
    if at != len(bundle):
        raise RolloutMessageError(f"damaged bundle: {len(bundle) - at} bytes left over")
    return spec, files
