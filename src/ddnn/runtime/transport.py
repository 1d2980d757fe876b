"""Message transport interface shared by the in-memory twin and MQTT.

Runtime processes only see `Transport`: they publish bytes on a topic and subscribe handlers to
topic filters. MQTT semantics (wildcards, `$share` groups, packet size limits, retained
messages) are implemented here once so the in-memory transport behaves like a real broker in
tests.
"""

from __future__ import annotations

import functools
import importlib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from ddnn.errors import DdnnError

Handler = Callable[[str, bytes], None]
"""Called as `handler(topic, payload)` on the transport's own thread; must return quickly."""

DEFAULT_MAX_PACKET_SIZE = 1 << 20
"""Packet limit (1 MiB) used when the broker does not announce one; also what `ddnn broker` sets."""

TOPIC_BUDGET = 128
"""`Transport.max_payload` is guaranteed for any topic up to this many UTF-8 bytes."""

MQTT_MAX_PACKET_SIZE = 268_435_460
"""Largest packet MQTT can express: 1 header byte + 4 length bytes + 268,435,455."""

SHARE_PREFIX = "$share/"


# --- topics and filters ---------------------------------------------------------------------


def validate_topic(topic: str) -> None:
    """Reject topic names a broker would refuse, so both transports fail the same way."""
    if not isinstance(topic, str) or not topic:
        raise DdnnError(f"topic must be a non-empty string, got {topic!r}")
    if "+" in topic or "#" in topic:
        raise DdnnError(f"cannot publish to {topic!r}: wildcards '+' and '#' are for filters only")
    if topic.startswith("$"):
        raise DdnnError(f"cannot publish to {topic!r}: topics starting with '$' are reserved")
    _check_common(topic, "topic")


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split `$share/<group>/<filter>` into (group, filter); plain filters give (None, filter)."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, sep, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not sep or not group or not inner:
        raise DdnnError(
            f"bad shared subscription {topic_filter!r}: expected $share/<group>/<filter>"
        )
    if "+" in group or "#" in group:
        raise DdnnError(f"bad shared subscription {topic_filter!r}: group has a wildcard")
    return group, inner


def validate_filter(topic_filter: str) -> tuple[str | None, str]:
    """Check MQTT filter syntax; returns `split_shared(topic_filter)`."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise DdnnError(f"topic filter must be a non-empty string, got {topic_filter!r}")
    _check_common(topic_filter, "topic filter")
    group, inner = split_shared(topic_filter)
    levels = inner.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise DdnnError(f"bad topic filter {topic_filter!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise DdnnError(f"bad topic filter {topic_filter!r}: '+' must be a whole level")
    return group, inner


# What Mosquitto (and libmosquitto, before sending) treat as malformed UTF-8 in a topic: control
# characters and non-characters, which MQTT says SHOULD NOT appear. A broker disconnects a
# client that sends one, so every transport refuses them up front.
_REFUSED_CHARACTERS = re.compile(
    "[\x01-\x1f\x7f-\x9f\ufdd0-\ufdef"
    + "".join(chr((plane << 16) | 0xFFFE) + chr((plane << 16) | 0xFFFF) for plane in range(17))
    + "]"
)


def _check_common(text: str, what: str) -> None:
    if "\x00" in text:
        raise DdnnError(f"{what} {text!r} contains a NUL character")
    refused = _REFUSED_CHARACTERS.search(text)
    if refused is not None:
        raise DdnnError(
            f"{what} {text!r} contains U+{ord(refused.group()):04X}: brokers refuse control "
            "characters and non-characters in topics (MQTT 1.5.4)"
        )
    if len(text.encode("utf-8", "surrogatepass")) > 65535:
        raise DdnnError(f"{what} is longer than MQTT's 65535-byte limit")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a plain (non-`$share`) filter against a topic name."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # wildcards never match $-topics at the first level (MQTT 4.7.2)
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic could match both filters (`$share` groups aside). Errs towards True:
    a client whose filters overlap tags them with subscription identifiers."""
    la, lb = split_shared(a)[1].split("/"), split_shared(b)[1].split("/")
    for x, y in zip(la, lb, strict=False):
        if "#" in (x, y):
            return True
        if x != y and "+" not in (x, y):
            return False
    longer = la if len(la) > len(lb) else lb
    return len(la) == len(lb) or longer[min(len(la), len(lb))] == "#"  # 'a/#' matches 'a'


# --- size limits ----------------------------------------------------------------------------


def publish_packet_size(topic: str, payload_len: int) -> int:
    """Exact size of the MQTT v5 QoS-1 PUBLISH packet (no properties) carrying this payload."""
    remaining = 2 + len(topic.encode("utf-8")) + 2 + 1 + payload_len
    return 1 + _varint_len(remaining) + remaining


def max_payload_for(max_packet_size: int, topic_len: int = TOPIC_BUDGET) -> int:
    """Largest payload that fits a packet limit on a topic of `topic_len` bytes."""
    fixed = 2 + topic_len + 2 + 1
    for header in (2, 3, 4, 5):  # 1 type byte + 1..4 remaining-length bytes
        payload = max_packet_size - header - fixed
        if payload >= 0 and 1 + _varint_len(fixed + payload) <= header:
            return payload
    return 0


def _varint_len(value: int) -> int:
    return 1 if value < 128 else 2 if value < 16_384 else 3 if value < 2_097_152 else 4


@functools.lru_cache(maxsize=4096)
def _validated(topic: str) -> None:
    """`validate_topic` once per topic (a refused one raises every time): a tier publishes to
    the same few topics on every message."""
    validate_topic(topic)


def check_publish(topic: str, payload: bytes, max_packet_size: int) -> None:
    """Validate a publish before it leaves: brokers drop oversize packets and paho retries them."""
    if type(topic) is str:
        _validated(topic)
    else:
        validate_topic(topic)  # refuses it
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    size = publish_packet_size(topic, len(payload))
    if size > max_packet_size:
        room = max_payload_for(max_packet_size, len(topic.encode("utf-8")))
        raise DdnnError(
            f"payload of {len(payload)} bytes on {topic!r} makes a {size}-byte MQTT packet, over "
            f"the broker limit of {max_packet_size} bytes (at most {room} payload bytes fit); "
            "send smaller tensors (encoding 'int8' or 'bits') or raise the broker's "
            "max_packet_size"
        )


# --- subscription routing -------------------------------------------------------------------


OwnerT = TypeVar("OwnerT", bound=Hashable)


@dataclass
class _Group(Generic[OwnerT]):
    members: dict[OwnerT, Handler] = field(default_factory=dict)
    turn: int = 0


class SubscriptionTable(Generic[OwnerT]):
    """Who receives a topic: every matching plain subscription, plus one member of each
    matching `$share` group, chosen round-robin. One handler per (owner, filter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plain: dict[tuple[OwnerT, str], Handler] = {}
        self._groups: dict[tuple[str, str], _Group[OwnerT]] = {}

    def add(self, owner: OwnerT, topic_filter: str, handler: Handler) -> None:
        """Subscribe `owner`; subscribing the same filter again replaces its handler."""
        group, inner = validate_filter(topic_filter)
        with self._lock:
            if group is None:
                self._plain[(owner, inner)] = handler
            else:
                self._groups.setdefault((group, inner), _Group[OwnerT]()).members[owner] = handler

    def remove(self, owner: OwnerT, topic_filter: str) -> bool:
        """Unsubscribe; returns False when `owner` had no such subscription."""
        group, inner = split_shared(topic_filter)
        with self._lock:
            if group is None:
                return self._plain.pop((owner, inner), None) is not None
            entry = self._groups.get((group, inner))
            if entry is None or entry.members.pop(owner, None) is None:
                return False
            if not entry.members:
                del self._groups[(group, inner)]
            return True

    def remove_owner(self, owner: OwnerT) -> None:
        """Drop all subscriptions of `owner` (a closed transport)."""
        with self._lock:
            for plain_key in [k for k in self._plain if k[0] == owner]:
                del self._plain[plain_key]
            for group_key, entry in list(self._groups.items()):
                entry.members.pop(owner, None)
                if not entry.members:
                    del self._groups[group_key]

    def route(self, topic: str) -> list[tuple[OwnerT, Handler]]:
        """Recipients of one message, advancing the round-robin of matching groups."""
        with self._lock:
            out = [(o, h) for (o, f), h in self._plain.items() if topic_matches(f, topic)]
            for (_, inner), entry in self._groups.items():
                if topic_matches(inner, topic):
                    members = list(entry.members.items())
                    out.append(members[entry.turn % len(members)])
                    entry.turn += 1
            return out


class RetainedStore:
    """A broker's retained messages: the last retained payload of each topic (MQTT 3.3.1.3)."""

    def __init__(self) -> None:
        self._messages: dict[str, bytes] = {}

    def keep(self, topic: str, payload: bytes) -> None:
        """Remember `payload` for `topic`; an empty payload forgets the topic's message."""
        if payload:
            self._messages[topic] = payload
        else:
            self._messages.pop(topic, None)

    def matching(self, topic_filter: str) -> list[tuple[str, bytes]]:
        """What a new subscription to `topic_filter` receives: every retained message it
        matches. A `$share` member gets them too, as Mosquitto 2.0 does (MQTT 5 says it
        should not; no ddnn topic is both retained and shared)."""
        inner = split_shared(topic_filter)[1]
        return [(t, p) for t, p in self._messages.items() if topic_matches(inner, t)]


# --- the interface --------------------------------------------------------------------------


class Transport(ABC):
    """Publish/subscribe of opaque byte payloads with MQTT semantics.

    Handlers run on the transport's own thread (one per transport), in arrival order; they must
    be quick (enqueue and return) because they delay every later message of this transport.
    """

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """Build from a `scheme://...` URL; used by `create_transport`."""

    @property
    @abstractmethod
    def max_packet_size(self) -> int:
        """Largest MQTT packet (header + topic + payload) the broker accepts."""

    @property
    def max_payload(self) -> int:
        """Largest payload accepted on any topic of up to `TOPIC_BUDGET` bytes."""
        return max_payload_for(self.max_packet_size)

    @property
    def stats(self) -> dict[str, int]:
        """Connection counters (connects, losses, refusals) where the transport has them."""
        return {}

    @abstractmethod
    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Send without waiting; raises DdnnError for bad topics and oversize payloads.

        `retain`: the broker keeps this payload as the topic's last retained message and hands
        it to every later subscription that matches; an empty retained payload clears it. For
        state a late subscriber needs at once (the current version)."""

    @abstractmethod
    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Route messages matching `topic_filter` (wildcards and `$share/<group>/` allowed)."""

    @abstractmethod
    def unsubscribe(self, topic_filter: str) -> None:
        """Stop routing `topic_filter`; unknown filters are ignored."""

    @abstractmethod
    def close(self) -> None:
        """Release threads and sockets; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- registry -------------------------------------------------------------------------------

TransportFactory = Callable[..., Transport]
_REGISTRY: dict[str, TransportFactory] = {}


def register_transport(scheme: str, factory: TransportFactory) -> None:
    """Make `create_transport("<scheme>://...")` call `factory(url, **kwargs)`."""
    _REGISTRY[scheme] = factory


def _lazy(module: str, cls_name: str) -> TransportFactory:
    """Import on first use so `memory://` users never import paho (nor load libmosquitto)."""

    def factory(url: str, **kwargs: Any) -> Transport:
        cls: type[Transport] = getattr(importlib.import_module(module), cls_name)
        return cls.from_url(url, **kwargs)

    return factory


register_transport("memory", _lazy("ddnn.runtime.memory", "MemoryTransport"))

# --- MQTT client libraries --------------------------------------------------------------------

DEFAULT_MQTT_CLIENT = "paho"
MQTT_SCHEMES = ("mqtt", "mqtts")
_CLIENTS: dict[str, TransportFactory] = {}


def register_mqtt_client(name: str, factory: TransportFactory) -> None:
    """Make `create_transport("mqtt://...", mqtt_client=name)` call `factory(url, **kwargs)`."""
    _CLIENTS[name] = factory


def mqtt_client_names() -> tuple[str, ...]:
    """The MQTT client libraries a broker transport can use (`--mqtt-client`)."""
    return tuple(_CLIENTS)


def _mqtt(url: str, *, mqtt_client: str = DEFAULT_MQTT_CLIENT, **kwargs: Any) -> Transport:
    if mqtt_client not in _CLIENTS:
        raise DdnnError(
            f"unknown MQTT client {mqtt_client!r}; valid: {', '.join(mqtt_client_names())}"
        )
    return _CLIENTS[mqtt_client](url, **kwargs)


register_mqtt_client("paho", _lazy("ddnn.runtime.mqtt", "MqttTransport"))
register_mqtt_client("libmosquitto", _lazy("ddnn.runtime.mosquitto", "MosquittoTransport"))
for _scheme in MQTT_SCHEMES:
    register_transport(_scheme, _mqtt)


def create_transport(
    url: str, *, mqtt_client: str = DEFAULT_MQTT_CLIENT, **kwargs: Any
) -> Transport:
    """`memory://<name>` (in-process hub), `mqtt://host:port` or `mqtts://host:port` (a
    broker, plain or TLS, through the client library `mqtt_client`: see
    `mqtt_client_names()`; the in-process hub has none and ignores it)."""
    scheme, sep, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
    if not sep or scheme not in _REGISTRY:
        valid = ", ".join(f"{s}://" for s in sorted(_REGISTRY))
        raise DdnnError(
            f"unknown transport URL {url!r}; valid schemes: {valid} "
            "(e.g. memory://test or mqtt://127.0.0.1:1883)"
        )
    if scheme in MQTT_SCHEMES:
        kwargs["mqtt_client"] = mqtt_client
    return _REGISTRY[scheme](url, **kwargs)
