"""What every MQTT client transport does the same way, whichever library speaks the protocol.

`BrokerTransport` holds the bookkeeping that paho (`runtime.mqtt`) and libmosquitto
(`runtime.mosquitto`) share: the subscription table and its identifiers, routing a delivery to
its handlers, waiting for SUBACK, resubscribing on every CONNACK, the counters, and what a
refused connection, publish or subscription says. A subclass only opens the connection, sends
packets and turns its library's callbacks into the `_on_*` calls below, on its network thread.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
import uuid
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Self

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
HINT = "start one with `ddnn broker`, or pass --broker mqtt://host:port"
STATS = (
    "connects", "connection_losses", "publishes_refused", "publishes_unrouted",
    "subscriptions_refused",
)  # fmt: skip
NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason: nobody subscribes to the topic
FAILURE = 0x80  # MQTT v5 reason codes from here on are failures
_RECENT = 1024  # publishes remembered to name the topic of a refused one
_ROUTES = 4096  # topics whose handlers are remembered
_ROUTE_TOPIC_MAX = 256  # longer topics are matched every time: the cache stays small


class BrokerTransport(Transport):
    """A connection to an MQTT v5 broker; the constructor returns once CONNACK arrived (see
    `_connect`). `tls`: True for the system CAs, a mapping of paho's `tls_set()` names
    (`ca_certs`, `certfile`, `keyfile`), or (paho only) an `ssl.SSLContext`. A subclass builds
    its library's client in `_setup`; every other argument means the same for both."""

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
        if password is not None and username is None:
            raise DdnnError("a password was given without a username; pass username= too")
        self.url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
        self.client_id = client_id or f"ddnn-{uuid.uuid4().hex[:12]}"
        self._username = username
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
        # that no untagged SUBSCRIBE can replace a tagged one (clients only queue: never block)
        self._tag_lock = threading.RLock()
        self._acks = threading.Condition()  # SUBACK hand-off to subscribe()
        self._waiting: set[int] = set()
        self._ack_failures: dict[int, list[str]] = {}
        self._connack = threading.Event()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._failed: OSError | None = None  # the connection failed before any CONNACK
        self._net_ident: int | None = None  # the network thread, known from its first callback
        self._stats = dict.fromkeys(STATS, 0)
        self._recent: OrderedDict[int, str] = OrderedDict()  # mid -> topic, to name refusals
        self._unnamed: dict[int, Callable[[str], None]] = {}  # refusals awaiting their topic
        self._names_lock = threading.Lock()
        self._setup(username, password, tls, reconnect_delay)
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

    # --- what a client library provides -----------------------------------------------------

    @abstractmethod
    def _setup(
        self,
        username: str | None,
        password: str | None,
        tls: bool | Mapping[str, Any] | ssl.SSLContext,
        reconnect_delay: tuple[float, float],
    ) -> None:
        """Build the library's client (credentials, TLS, reconnect delays, callbacks), not yet
        connected; `self._timeout` and `self._max_queued` are set."""

    @abstractmethod
    def _open(self, host: str, port: int, keepalive: int) -> None:
        """Connect the socket and send CONNECT; OSError (ssl.SSLError for TLS) on failure."""

    @abstractmethod
    def _start_loop(self) -> None:
        """Start the network thread, which reconnects by itself until `_shutdown`."""

    @abstractmethod
    def _send_publish(self, topic: str, payload: bytes, retain: bool) -> int:
        """Queue a QoS-1 PUBLISH (with the RETAIN flag when `retain`); returns its packet id.
        Offline: queued until reconnect; raises `self._backlog_error()` when too many wait."""

    @abstractmethod
    def _subscribe_packet(self, topic_filter: str, sid: int | None) -> int | None:
        """Queue a QoS-1 SUBSCRIBE (with identifier `sid`); its packet id, None when offline."""

    @abstractmethod
    def _unsubscribe_packet(self, topic_filter: str) -> None:
        """Queue an UNSUBSCRIBE."""

    @abstractmethod
    def _shutdown(self) -> None:
        """DISCONNECT, stop the network thread (not from inside it) and free the socket."""

    # --- the Transport interface ------------------------------------------------------------

    def _connect(self, host: str, port: int, keepalive: int) -> None:
        """Fail fast with a clear message instead of retrying a dead broker forever."""
        try:
            self._open(host, port, keepalive)
        except (OSError, ValueError) as exc:
            self.close()
            raise self._unreachable(exc) from None
        self._start_loop()
        if self._connack.wait(self._timeout) and self._refused is None and self._failed is None:
            logger.info("connected to %s as %s", self.url, self.client_id)
            return
        refused, failed = self._refused, self._failed
        self.close()
        if failed is not None:
            raise self._unreachable(failed) from None
        if refused is None:
            raise DdnnError(
                f"no CONNACK within {self._timeout:.1f} s from {self.url}: is it an MQTT 5 "
                f"broker, and does it need TLS (mqtts://)? {HINT}"
            )
        auth = any(word in refused.lower() for word in ("authori", "password"))
        hint = "; check username= and password=" if auth else ""
        raise DdnnError(f"the MQTT broker at {self.url} refused the connection: {refused}{hint}")

    def _unreachable(self, exc: Exception) -> DdnnError:
        """The connection (or its TLS handshake) failed before any CONNACK."""
        hint = (
            "the broker's certificate is not trusted or does not name this host: give its "
            "CA (ca_file in the access file, or tls={'ca_certs': ...})"
            if isinstance(exc, ssl.SSLError)
            else HINT
        )
        text = exc.args[0] if len(exc.args) == 1 else exc  # SSLError("x") prints as ('x',)
        return DdnnError(f"cannot connect to the MQTT broker at {self.url}: {text}; {hint}")

    def _fail_before_connack(self, exc: OSError) -> None:
        """For a client whose handshake finishes on its network thread: the connection failed
        there before any CONNACK; the waiting constructor reports `exc`."""
        if not self._connack.is_set():
            self._failed = exc
            self._connack.set()

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

    @property
    def _on_net_thread(self) -> bool:
        return threading.get_ident() == self._net_ident

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._check_open()
        check_publish(topic, payload, self.max_packet_size)
        data = bytes(payload) if isinstance(payload, memoryview) else payload
        self._remember(self._send_publish(topic, data, retain), topic)

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
            if mid is None or self._on_net_thread:
                return  # offline (resubscribed on connect) or inside a callback (cannot wait)
            self._waiting.add(mid)
            self._acks.wait_for(lambda: mid in self._ack_failures, self._timeout)
            self._waiting.discard(mid)
            failed = self._ack_failures.pop(mid, None)
        if failed is None and self._connected.is_set():
            raise DdnnError(f"{self.url} did not acknowledge subscribing to {topic_filter!r}")
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
            self._unsubscribe_packet(topic_filter)

    def close(self) -> None:
        """Disconnect and stop the network thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._shutdown()

    def _backlog_error(self) -> DdnnError:
        return DdnnError(
            f"{self._max_queued} messages are already waiting for {self.url}: the broker "
            "is unreachable or slower than the publish rate"
        )

    def _remember(self, mid: int, topic: str) -> None:
        """Keep the last few topics by packet id; only a refusal looks them up. The lock is
        ours alone and never held around a client call: a network thread may call back with
        its client's own lock held."""
        with self._names_lock:
            recent = self._recent
            recent.pop(mid, None)  # packet ids are reused: the newest publish goes to the end
            recent[mid] = topic
            while len(recent) > _RECENT:
                recent.popitem(last=False)
            report = self._unnamed.pop(mid, None)
        if report is not None:
            report(topic)

    def _check_open(self) -> None:
        if self._closed:
            raise DdnnError(f"the transport to {self.url} is closed; create a new one")

    def _start_tagging(self) -> None:
        """Two filters overlap: a message matching both may come once per subscription, so from
        now on every subscription carries an identifier and each delivery names the handlers
        it is for. The filters already held are subscribed again with theirs first (the broker
        handles one connection's packets in order). Without overlaps deliveries are routed by
        topic: the identifier property costs a parse on every message."""
        with self._tag_lock:
            with self._lock:
                self._tag = True
                held = [(f, sid) for f, (sid, _) in self._subs.items()]
            for topic_filter, sid in held:
                self._send_subscribe(topic_filter, sid)

    def _send_subscribe(self, topic_filter: str, sid: int) -> int | None:
        """SUBSCRIBE, with a subscription identifier once the client's filters overlap."""
        with self._tag_lock:
            return self._subscribe_packet(topic_filter, sid if self._tag else None)

    # --- events from the network thread: must never raise -----------------------------------

    def _on_connack(self, refused: str | None, broker_max: int | None) -> None:
        """CONNACK: `refused` is the reason text of a refusal."""
        self._net_ident = threading.get_ident()
        if refused is not None:
            logger.error("%s refused the connection: %s", self.url, refused)
            self._refused = refused
            self._connack.set()
            return
        self._broker_max = broker_max
        with self._lock:
            subs = [(f, sid) for f, (sid, _) in self._subs.items()]
        for topic_filter, sid in subs:
            try:
                self._send_subscribe(topic_filter, sid)
            except Exception:  # an exception here would kill the network thread
                logger.exception("could not resubscribe to %r", topic_filter)
        self._stats["connects"] += 1
        if self._connack.is_set():
            logger.info("reconnected to %s; resubscribed %d filter(s)", self.url, len(subs))
        self._connected.set()
        self._connack.set()

    def _on_connection_lost(self, reason: str) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._closed:
            self._stats["connection_losses"] += 1
        if not self._closed:
            logger.warning("lost the connection to %s (%s); reconnecting", self.url, reason)

    def _on_suback(self, mid: int, failures: list[str]) -> None:
        """SUBACK; `failures` holds the text of each refused filter's reason code."""
        if failures:
            self._stats["subscriptions_refused"] += 1
            logger.error("%s refused a subscription: %s", self.url, failures[0])
        with self._acks:
            if mid in self._waiting:
                self._ack_failures[mid] = failures
                self._acks.notify_all()

    def _on_puback(self, mid: int, code: int, text: str) -> None:
        """PUBACK: a failure code (e.g. 135 Not authorized from an ACL) must be visible, and so
        must code 16, No matching subscribers: a request nobody will answer (no server or edge
        serves that model), which otherwise only shows as a deadline passing."""
        if code == NO_MATCHING_SUBSCRIBERS:
            self._stats["publishes_unrouted"] += 1
            if self._stats["publishes_unrouted"] == 1:  # once: every later request says the same
                self._name_topic(mid, self._warn_unrouted)
            return
        if code < FAILURE:
            return
        self._stats["publishes_refused"] += 1
        self._name_topic(mid, lambda topic: self._log_refused(topic, text))

    def _name_topic(self, mid: int, report: Callable[[str], None]) -> None:
        """Report with the topic of publish `mid`, or, when its PUBACK came back before
        `publish` returned with the packet id, as soon as `_remember` learns it."""
        with self._names_lock:
            topic = self._recent.get(mid)
            if topic is None:
                self._unnamed[mid] = report
                return
        report(topic)

    def _warn_unrouted(self, topic: str) -> None:
        logger.warning(
            "%s has no subscriber for %r: no server (or edge) serves it, so nothing will "
            "answer; check the model name and that `ddnn serve` runs with this model",
            self.url, topic,
        )  # fmt: skip

    def _log_refused(self, topic: str, reason: str) -> None:
        logger.error(
            "%s refused a publish on %r as %s: %s; the broker's ACL does not let this identity "
            "publish there", self.url, topic, self._username or "anonymous", reason,
        )  # fmt: skip

    def _deliver(self, topic: str, payload: bytes, sids: list[int] | None) -> None:
        """One incoming message to each handler it is for; a failing handler is logged."""
        try:
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
        few topics (one per device and section) for every request. A known topic is looked up
        without the lock: a dict read is atomic, and every change to `_subs` empties `_routes`
        under the lock, so a lookup sees the table from just before a change or after it."""
        if not sids:
            handlers = self._routes.get(topic)
            if handlers is not None:
                return handlers
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
        return f"{type(self).__name__}({self.url}, {state})"
