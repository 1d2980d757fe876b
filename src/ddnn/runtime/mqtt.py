"""MQTT v5 transport on paho-mqtt 2.x: QoS 1, TCP_NODELAY, bounded connect, auto-reconnect.

paho leaves a few traps that this module closes:
- Nagle's algorithm is left on, so a small QoS-1 round trip on loopback takes ~44 ms instead
  of ~0.6 ms; we set TCP_NODELAY when the socket opens.
- A PUBLISH larger than the broker's Maximum Packet Size makes the broker drop the connection
  and paho re-send it after every reconnect, forever; we refuse it before it is queued.
- An exception in a callback kills paho's network thread; handlers are wrapped and logged.
- Subscriptions vanish when a broker restarts; we resubscribe on every CONNACK.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ddnn.errors import DdnnError
from ddnn.runtime.broker import DEFAULT_PORT, parse_broker_url
from ddnn.runtime.transport import (
    DEFAULT_MAX_PACKET_SIZE,
    Handler,
    Transport,
    check_publish,
    filters_overlap,
    split_shared,
    topic_matches,
    validate_filter,
)

logger = logging.getLogger(__name__)

QOS = 1
_HINT = "start one with `ddnn broker`, or pass --broker mqtt://host:port"
STATS = (
    "connects", "connection_losses", "publishes_refused", "publishes_unrouted",
    "subscriptions_refused",
)  # fmt: skip
_NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason: nobody subscribes to the topic
_RECENT = 1024  # publishes remembered to name the topic of a refused one
_ROUTES = 4096  # topics whose handlers are remembered
_ROUTE_TOPIC_MAX = 256  # longer topics are matched every time: the cache stays small


def set_nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's on_socket_open callback disabling Nagle: every frame is a complete message that
    should leave at once."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:
        logger.warning("could not set TCP_NODELAY (expect ~40 ms extra latency): %s", exc)


def _paho_log(client: paho.Client, userdata: Any, level: int, message: str) -> None:
    """paho logs routine reconnects as errors; our callbacks report what matters."""
    logger.debug("paho: %s", message)


def _configure_tls(client: paho.Client, tls: bool | Mapping[str, Any] | ssl.SSLContext) -> None:
    try:
        _apply_tls(client, tls)
    except (OSError, ssl.SSLError) as exc:  # paho's own message names no file
        files = {k: v for k, v in (tls.items() if isinstance(tls, Mapping) else ()) if v}
        raise DdnnError(f"cannot set up TLS with {files or 'the system CAs'}: {exc}") from None


def _apply_tls(client: paho.Client, tls: bool | Mapping[str, Any] | ssl.SSLContext) -> None:
    if isinstance(tls, ssl.SSLContext):
        client.tls_set_context(tls)
    elif tls is True:
        client.tls_set()
    elif isinstance(tls, Mapping):
        client.tls_set(**tls)
    elif tls is not False:
        raise DdnnError(
            f"tls={tls!r}: use True, an ssl.SSLContext, or a dict of paho tls_set() arguments"
        )


class MqttTransport(Transport):
    """A connection to an MQTT v5 broker; the constructor returns once CONNACK arrived."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: bool | Mapping[str, Any] | ssl.SSLContext = False,
        connect_timeout: float = 5.0,
        keepalive: int = 30,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        reconnect_delay: tuple[float, float] = (0.25, 8.0),
        max_queued_messages: int = 1000,
    ) -> None:
        self.url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
        self._configured_max = max_packet_size
        self._broker_max: int | None = None
        self._timeout = connect_timeout
        self._max_queued = max_queued_messages
        self._closed = False
        self._lock = threading.Lock()  # guards the two subscription maps
        self._subs: dict[str, tuple[int, Handler]] = {}  # filter -> (subscription id, handler)
        self._by_sid: dict[int, str] = {}
        # topic -> its handlers, for untagged deliveries; emptied whenever `_subs` changes
        self._routes: dict[str, list[Handler]] = {}
        self._sids = itertools.count(1)
        self._tag = False  # subscribe with identifiers: set once two of our filters overlap
        # held while deciding to tag and while each SUBSCRIBE reads `_tag` and is queued, so
        # that no untagged SUBSCRIBE can replace a tagged one (paho only queues: never blocks)
        self._tag_lock = threading.RLock()
        self._acks = threading.Condition()  # SUBACK hand-off to subscribe()
        self._waiting: set[int] = set()
        self._ack_codes: dict[int, list[ReasonCode]] = {}
        self._connack = threading.Event()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._net_thread: threading.Thread | None = None
        self._stats = dict.fromkeys(STATS, 0)
        self._recent: OrderedDict[int, str] = OrderedDict()  # mid -> topic, to name refusals

        self.client_id = client_id or f"ddnn-{uuid.uuid4().hex[:12]}"
        self._username = username
        self._client = self._make_client(username, password, tls)
        self._client.connect_timeout = connect_timeout
        self._client.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]
        self._client.max_queued_messages_set(max_queued_messages)
        self._connect(host, port, keepalive)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """`mqtt://host[:port]`, or `mqtts://` for TLS (system CAs unless `tls=` says
        otherwise); credentials go in keyword arguments."""
        host, port = parse_broker_url(url)
        if url.startswith("mqtts://"):
            kwargs["tls"] = kwargs.get("tls") or True
        elif kwargs.get("tls"):
            raise DdnnError(f"{url}: TLS settings were given for a plain mqtt:// URL; use mqtts://")
        return cls(host, port, **kwargs)

    def _make_client(
        self,
        username: str | None,
        password: str | None,
        tls: bool | Mapping[str, Any] | ssl.SSLContext,
    ) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
        )
        # With on_log set paho formats a line for every packet, 5 % of a busy server's GIL
        # time; the lines only show at DEBUG, so they are asked for only then.
        if logger.isEnabledFor(logging.DEBUG):
            client.on_log = _paho_log
        client.on_socket_open = set_nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        if password is not None and username is None:
            raise DdnnError("a password was given without a username; pass username= too")
        if username is not None:
            client.username_pw_set(username, password)
        _configure_tls(client, tls)
        return client

    def _connect(self, host: str, port: int, keepalive: int) -> None:
        """Fail fast with a clear message instead of retrying a dead broker forever."""
        try:
            self._client.connect(host, port, keepalive, properties=self._connect_properties())
        except (OSError, ValueError) as exc:
            hint = (
                "the broker's certificate is not trusted or does not name this host: give its "
                "CA (ca_file in the access file, or tls={'ca_certs': ...})"
                if isinstance(exc, ssl.SSLError)
                else _HINT
            )
            raise DdnnError(
                f"cannot connect to the MQTT broker at {self.url}: {exc}; {hint}"
            ) from None
        self._client.loop_start()
        if self._connack.wait(self._timeout) and self._refused is None:
            logger.info("connected to %s as %s", self.url, self.client_id)
            return
        refused = self._refused
        self.close()
        if refused is None:
            raise DdnnError(
                f"no CONNACK within {self._timeout:.1f} s from {self.url}: is it an MQTT 5 "
                f"broker, and does it need TLS (mqtts://)? {_HINT}"
            )
        auth = any(word in refused.lower() for word in ("authori", "password"))
        hint = "; check username= and password=" if auth else ""
        raise DdnnError(f"the MQTT broker at {self.url} refused the connection: {refused}{hint}")

    def _connect_properties(self) -> Properties:
        """Announce our Maximum Packet Size: the broker then drops larger messages instead of
        delivering them, so an oversized publish costs this process nothing (a 50 MB request
        on a broker without a size limit took a server to 2 GB)."""
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = self._configured_max
        return props

    @property
    def max_packet_size(self) -> int:
        """The broker's Maximum Packet Size from CONNACK, else the configured default."""
        return self._broker_max or self._configured_max

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def stats(self) -> dict[str, int]:
        """Counters since creation: connects, connection losses, and what the broker refused
        (an ACL denial shows up here and in the log, never silently)."""
        return dict(self._stats)

    def publish(self, topic: str, payload: bytes) -> None:
        self._check_open()
        check_publish(topic, payload, self.max_packet_size)
        data = bytes(payload) if isinstance(payload, memoryview) else payload
        info = self._client.publish(topic, data, qos=QOS)
        rc = info.rc
        self._remember(info.mid, topic)
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            logger.debug("not connected to %s: %r is queued until reconnect", self.url, topic)
        elif rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise DdnnError(
                f"{self._max_queued} messages are already waiting for {self.url}: the broker "
                "is unreachable or slower than the publish rate"
            )
        elif rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise DdnnError(f"publish to {topic!r} failed: {paho.error_string(rc)}")

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Returns once the broker acknowledged, so a following publish is seen."""
        self._check_open()
        validate_filter(topic_filter)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        with self._lock:
            old = self._subs.get(topic_filter)
            sid = old[0] if old else next(self._sids)
            overlap = not self._tag and any(
                f != topic_filter and filters_overlap(f, topic_filter) for f in self._subs
            )
            self._subs[topic_filter] = (sid, handler)
            self._by_sid[sid] = topic_filter
            self._routes.clear()
        if overlap:
            self._start_tagging()
        with self._acks:
            mid = self._send_subscribe(topic_filter, sid)
            if mid is None or threading.current_thread() is self._net_thread:
                return  # offline (resubscribed on connect) or inside a callback (cannot wait)
            self._waiting.add(mid)
            self._acks.wait_for(lambda: mid in self._ack_codes, self._timeout)
            self._waiting.discard(mid)
            codes = self._ack_codes.pop(mid, None)
        if codes is None and self._connected.is_set():
            raise DdnnError(f"{self.url} did not acknowledge subscribing to {topic_filter!r}")
        failed = [code for code in codes or () if code.is_failure]
        if failed:
            self.unsubscribe(topic_filter)
            raise DdnnError(f"{self.url} refused the subscription {topic_filter!r}: {failed[0]}")

    def unsubscribe(self, topic_filter: str) -> None:
        validate_filter(topic_filter)
        with self._lock:
            entry = self._subs.pop(topic_filter, None)
            if entry is not None:
                del self._by_sid[entry[0]]
                self._routes.clear()
        if entry is not None and not self._closed:
            self._client.unsubscribe(topic_filter)

    def close(self) -> None:
        """Disconnect and join paho's network thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client.disconnect()
        if threading.current_thread() is self._net_thread:
            self._client.loop_stop()  # cannot join itself; the loop ends after this callback
            return
        self._client.loop_stop()
        # paho closes its wake-up socketpair only in Client.__del__; free the fds now.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset(sockpair_only=True)

    def _remember(self, mid: int, topic: str) -> None:
        """Keep the last few topics by packet id; only a refusal looks them up. No lock is held
        around paho's publish: its network thread calls on_publish with paho's own lock held."""
        recent = self._recent
        recent.pop(mid, None)  # paho reuses packet ids: the newest publish goes to the end
        recent[mid] = topic
        while len(recent) > _RECENT:
            try:
                recent.popitem(last=False)
            except KeyError:
                break

    def _check_open(self) -> None:
        if self._closed:
            raise DdnnError(f"the transport to {self.url} is closed; create a new one")

    def _start_tagging(self) -> None:
        """Two filters overlap: a message matching both may come once per subscription, so from
        now on every subscription carries an identifier and each delivery names the handlers
        it is for. The filters already held are subscribed again with theirs first (the broker
        handles one connection's packets in order). Without overlaps deliveries are routed by
        topic: the identifier property costs paho a parse on every message."""
        with self._tag_lock:
            with self._lock:
                self._tag = True
                held = [(f, sid) for f, (sid, _) in self._subs.items()]
            for topic_filter, sid in held:
                self._send_subscribe(topic_filter, sid)

    def _send_subscribe(self, topic_filter: str, sid: int) -> int | None:
        """SUBSCRIBE, with a subscription identifier once the client's filters overlap."""
        with self._tag_lock:
            props = None
            if self._tag:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sid
            rc, mid = self._client.subscribe(
                topic_filter, options=SubscribeOptions(qos=QOS), properties=props
            )
        return mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    # --- callbacks: run on paho's network thread, must never raise --------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._net_thread = threading.current_thread()
        if reason.is_failure:
            logger.error("%s refused the connection: %s", self.url, reason)
            self._refused = str(reason)
            self._connack.set()
            return
        self._broker_max = getattr(properties, "MaximumPacketSize", None)
        with self._lock:
            subs = [(f, sid) for f, (sid, _) in self._subs.items()]
        for topic_filter, sid in subs:
            try:
                self._send_subscribe(topic_filter, sid)
            except Exception:  # an exception here would kill paho's network thread
                logger.exception("could not resubscribe to %r", topic_filter)
        self._stats["connects"] += 1
        if self._connack.is_set():
            logger.info("reconnected to %s; resubscribed %d filter(s)", self.url, len(subs))
        self._connected.set()
        self._connack.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._closed:
            self._stats["connection_losses"] += 1
        if not self._closed:
            logger.warning("lost the connection to %s (%s); reconnecting", self.url, reason)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [code for code in codes if code.is_failure]
        if failed:
            self._stats["subscriptions_refused"] += 1
            logger.error("%s refused a subscription: %s", self.url, failed[0])
        with self._acks:
            if mid in self._waiting:
                self._ack_codes[mid] = codes
                self._acks.notify_all()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        """PUBACK: a failure code (e.g. 135 Not authorized from an ACL) must be visible, and so
        must code 16, No matching subscribers: a request nobody will answer (no server or edge
        serves that model), which otherwise only shows as a deadline passing."""
        if reason.value == _NO_MATCHING_SUBSCRIBERS:
            self._stats["publishes_unrouted"] += 1
            if self._stats["publishes_unrouted"] == 1:  # once: every later request says the same
                logger.warning(
                    "%s has no subscriber for %r: no server (or edge) serves it, so nothing will "
                    "answer; check the model name and that `ddnn serve` runs with this model",
                    self.url, self._recent.get(mid, "(unknown topic)"),
                )  # fmt: skip
            return
        if not reason.is_failure:
            return
        self._stats["publishes_refused"] += 1
        topic = self._recent.get(mid, "(unknown topic)")
        logger.error(
            "%s refused a publish on %r as %s: %s; the broker's ACL does not let this identity "
            "publish there", self.url, topic, self._username or "anonymous", reason,
        )  # fmt: skip

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
            payload = bytes(message.payload)  # no-op for bytes; handlers are typed for bytes
            sids = getattr(message.properties, "SubscriptionIdentifier", None)
            handlers = self._handlers_for(topic, sids)
        except Exception:
            logger.exception("dropping an undecodable message from %s", self.url)
            return
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:
                logger.exception("handler for %r failed; the message is dropped", topic)

    def _handlers_for(self, topic: str, sids: list[int] | None) -> list[Handler]:
        """By the subscription identifiers a delivery carries (the client's filters overlap),
        else by matching the topic against the filters, once per topic: a server sees the same
        few topics (one per device and section) for every request."""
        with self._lock:
            if sids:
                filters = [self._by_sid.get(sid) for sid in sids]
                return [self._subs[f][1] for f in filters if f is not None and f in self._subs]
            handlers = self._routes.get(topic)
            if handlers is None:
                handlers = [
                    h
                    for f, (_, h) in self._subs.items()
                    if topic_matches(split_shared(f)[1], topic)
                ]
                if len(topic) <= _ROUTE_TOPIC_MAX:
                    if len(self._routes) >= _ROUTES:  # many devices: start over
                        self._routes.clear()
                    self._routes[topic] = handlers
            return handlers

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "reconnecting"
        return f"MqttTransport({self.url}, {state})"
