"""MQTT v5 transport on libmosquitto (`--mqtt-client libmosquitto`): the protocol, its buffers
and the network loop in C, through the thin binding `runtime.libmosq`.

What it costs and saves against paho is measured in docs/results.md; the semantics are
`BrokerTransport`'s, shared with paho. Traps closed here:
- libmosquitto's own `mosquitto_loop_start` runs a thread Python does not know; logging from
  it would register a dummy thread that never goes away. The loop runs instead in a Python
  thread that calls `mosquitto_loop_forever` (ctypes drops the GIL for the C call and takes
  it back for each callback), declared with `mosquitto_threaded_set`: without it a publish
  from another thread writes the socket alongside the loop and replies were lost (seen here).
- ctypes callbacks must outlive the client: they are kept on the instance, and the client is
  destroyed only after its loop thread ended.
- libmosquitto has no cap on publishes waiting for PUBACK while the broker is away; the
  `max_queued_messages` cap is kept here, as paho keeps it.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import threading
from collections.abc import Mapping
from typing import Any

from ddnn.errors import DdnnError
from ddnn.runtime import libmosq
from ddnn.runtime.mqttbase import FAILURE, QOS, BrokerTransport

logger = logging.getLogger(__name__)

_TLS_KEYS = ("ca_certs", "certfile", "keyfile")  # paho's tls_set() names, as access files give


class MosquittoTransport(BrokerTransport):
    """A connection to an MQTT v5 broker through libmosquitto; the constructor returns once
    CONNACK arrived. Takes the same arguments as `MqttTransport` except an `ssl.SSLContext`
    (libmosquitto reads certificate files itself)."""

    def _setup(
        self,
        username: str | None,
        password: str | None,
        tls: bool | Mapping[str, Any] | ssl.SSLContext,
        reconnect_delay: tuple[float, float],
    ) -> None:
        self._lib = libmosq.lib()
        self._unacked: set[int] = set()  # QoS-1 publishes waiting for PUBACK
        # a PUBACK can come back before mosquitto_publish_v5 has returned the packet id to
        # us; without this lock such ids stayed in `_unacked` and, a thousand later, every
        # publish was refused as a backlog (seen under load). Never held by a C callback's
        # caller: libmosquitto holds only its callback mutex around on_publish.
        self._unacked_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._free_on_exit = False
        self._callbacks = (  # kept alive as long as the client: C holds only their addresses
            libmosq.ON_CONNECT(self._c_connect),
            libmosq.ON_DISCONNECT(self._c_disconnect),
            libmosq.ON_PUBLISH(self._c_publish),
            libmosq.ON_MESSAGE(self._c_message),
            libmosq.ON_SUBSCRIBE(self._c_subscribe),
        )
        self._mosq = self._lib.mosquitto_new(self.client_id.encode(), True, None)
        if not self._mosq:
            raise DdnnError(
                f"libmosquitto could not create a client: {libmosq.strerror(libmosq.ERR_ERRNO)}"
            )
        try:
            self._configure(username, password, tls, reconnect_delay)
        except BaseException:
            self._free()
            raise

    def _configure(
        self,
        username: str | None,
        password: str | None,
        tls: bool | Mapping[str, Any] | ssl.SSLContext,
        reconnect_delay: tuple[float, float],
    ) -> None:
        lib, mosq = self._lib, self._mosq
        # our loop is a thread libmosquitto did not start: without this a publish from another
        # thread writes the socket while the loop thread does, and messages are lost
        lib.mosquitto_threaded_set(mosq, True)
        lib.mosquitto_int_option(mosq, libmosq.OPT_PROTOCOL_VERSION, libmosq.PROTOCOL_V5)
        lib.mosquitto_int_option(mosq, libmosq.OPT_TCP_NODELAY, 1)
        low, high = (max(1, round(d)) for d in reconnect_delay)  # whole seconds in libmosquitto
        lib.mosquitto_reconnect_delay_set(mosq, low, max(low, high), True)
        for setter, callback in zip(
            (
                lib.mosquitto_connect_v5_callback_set,
                lib.mosquitto_disconnect_v5_callback_set,
                lib.mosquitto_publish_v5_callback_set,
                lib.mosquitto_message_v5_callback_set,
                lib.mosquitto_subscribe_v5_callback_set,
            ),
            self._callbacks,
            strict=True,
        ):
            setter(mosq, callback)
        if username is not None:
            password_b = None if password is None else password.encode()
            lib.mosquitto_username_pw_set(mosq, username.encode(), password_b)
        if tls:
            self._configure_tls(tls)

    def _configure_tls(self, tls: bool | Mapping[str, Any] | ssl.SSLContext) -> None:
        """True: the system CAs; a mapping: paho's `ca_certs` / `certfile` / `keyfile`."""
        if isinstance(tls, ssl.SSLContext) or not (tls is True or isinstance(tls, Mapping)):
            raise DdnnError(
                f"tls={tls!r}: libmosquitto takes True (system CAs) or a dict of "
                f"{', '.join(_TLS_KEYS)} file names; use --mqtt-client paho for an SSLContext"
            )
        files = dict(tls) if isinstance(tls, Mapping) else {}
        unknown = sorted(set(files) - set(_TLS_KEYS))
        if unknown:
            raise DdnnError(f"tls settings {unknown} are not supported by libmosquitto")
        defaults = ssl.get_default_verify_paths()
        cafile = files.get("ca_certs") or defaults.cafile
        capath = None if files.get("ca_certs") else defaults.capath
        args = [cafile, capath, files.get("certfile"), files.get("keyfile")]
        rc = self._lib.mosquitto_tls_set(self._mosq, *(_b(a) for a in args), None)
        if rc != libmosq.ERR_SUCCESS:
            named = {k: v for k, v in files.items() if v}
            raise DdnnError(
                f"cannot set up TLS with {named or 'the system CAs'}: {libmosq.strerror(rc)} "
                "(a file is missing or unreadable)"
            )

    # --- BrokerTransport's primitives --------------------------------------------------------

    def _open(self, host: str, port: int, keepalive: int) -> None:
        """Blocking TCP connect (and TLS handshake) plus CONNECT, announcing our Maximum
        Packet Size as the paho transport does."""
        with libmosq.PropertyList() as props:
            props.add_int32(libmosq.PROP_MAXIMUM_PACKET_SIZE, self._configured_max)
            ctypes.set_errno(0)
            rc = self._lib.mosquitto_connect_bind_v5(
                self._mosq, host.encode(), port, keepalive, None, props.head
            )
        if rc == libmosq.ERR_TLS:
            raise ssl.SSLError(f"TLS handshake failed: {libmosq.strerror(rc)}")
        if rc != libmosq.ERR_SUCCESS:
            raise OSError(libmosq.strerror(rc))

    def _start_loop(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"libmosquitto-{self.client_id}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        self._net_ident = threading.get_ident()
        rc = self._lib.mosquitto_loop_forever(self._mosq, -1, 1)
        if self._closed and self._free_on_exit:
            self._free()  # closed from one of our callbacks: nobody else can free it
        elif rc != libmosq.ERR_SUCCESS and not self._closed:
            reason = libmosq.strerror(rc)
            # the TLS handshake may end here rather than in the blocking connect
            tls = rc == libmosq.ERR_TLS
            failure = ssl.SSLError(f"TLS handshake failed: {reason}") if tls else OSError(reason)
            self._fail_before_connack(failure)
            logger.error("the libmosquitto loop for %s ended: %s", self.url, reason)
            self._on_connection_lost(libmosq.strerror(rc))

    def _send_publish(self, topic: str, payload: bytes, retain: bool) -> int:
        if len(self._unacked) >= self._max_queued:
            raise self._backlog_error()
        mid = ctypes.c_int()
        with self._unacked_lock:
            rc = self._lib.mosquitto_publish_v5(
                self._mosq, ctypes.byref(mid), topic.encode(), len(payload), payload, QOS, retain,
                None,
            )  # fmt: skip
            if rc in (libmosq.ERR_SUCCESS, libmosq.ERR_NO_CONN):
                self._unacked.add(mid.value)
        if rc == libmosq.ERR_NO_CONN:
            logger.debug("not connected to %s: %r is queued until reconnect", self.url, topic)
        elif rc != libmosq.ERR_SUCCESS:
            raise DdnnError(f"publish to {topic!r} failed: {libmosq.strerror(rc)}")
        return mid.value

    def _subscribe_packet(self, topic_filter: str, sid: int | None) -> int | None:
        mid = ctypes.c_int()
        with libmosq.PropertyList() as props:
            if sid is not None:
                props.add_varint(libmosq.PROP_SUBSCRIPTION_IDENTIFIER, sid)
            rc = self._lib.mosquitto_subscribe_v5(
                self._mosq, ctypes.byref(mid), topic_filter.encode(), QOS, 0, props.head
            )
        return mid.value if rc == libmosq.ERR_SUCCESS else None

    def _unsubscribe_packet(self, topic_filter: str) -> None:
        self._lib.mosquitto_unsubscribe_v5(self._mosq, None, topic_filter.encode(), None)

    def _shutdown(self) -> None:
        """DISCONNECT ends `mosquitto_loop_forever`; the client is freed once its thread is
        gone (from inside a callback, by that thread on its way out)."""
        self._lib.mosquitto_disconnect_v5(self._mosq, libmosq.RC_DISCONNECT_NORMAL, None)
        thread = self._thread
        if thread is None:
            self._free()
        elif self._on_net_thread:
            self._free_on_exit = True  # the loop ends after this callback, then frees
        else:
            thread.join(self._timeout + 5)
            if thread.is_alive():
                logger.error("the libmosquitto loop for %s did not stop", self.url)
                return  # freeing the client under a running loop would crash
            self._free()

    def _free(self) -> None:
        if self._mosq:
            self._lib.mosquitto_destroy(self._mosq)
            self._mosq = None

    # --- libmosquitto's callbacks: on the loop thread, must never raise ---------------------

    def _c_connect(self, mosq: int, obj: int, rc: int, flags: int, props: int | None) -> None:
        try:
            refused = libmosq.reason_string(rc) if rc else None
            self._on_connack(refused, libmosq.read_int32(props, libmosq.PROP_MAXIMUM_PACKET_SIZE))
        except Exception:
            logger.exception("CONNACK from %s could not be handled", self.url)

    def _c_disconnect(self, mosq: int, obj: int, rc: int, props: int | None) -> None:
        try:
            self._on_connection_lost(libmosq.reason_string(rc) if rc else "closed")
        except Exception:
            logger.exception("a disconnect from %s could not be handled", self.url)

    def _c_subscribe(
        self, mosq: int, obj: int, mid: int, count: int, granted: Any, props: int | None
    ) -> None:
        try:
            codes = [granted[i] for i in range(count)]
            self._on_suback(mid, [libmosq.reason_string(c) for c in codes if c >= FAILURE])
        except Exception:
            logger.exception("a SUBACK from %s could not be handled", self.url)

    def _c_publish(self, mosq: int, obj: int, mid: int, rc: int, props: int | None) -> None:
        try:
            with self._unacked_lock:
                self._unacked.discard(mid)
            if rc:
                self._on_puback(mid, rc, libmosq.reason_string(rc))
        except Exception:
            logger.exception("a PUBACK from %s could not be handled", self.url)

    def _c_message(self, mosq: int, obj: int, message: Any, props: int | None) -> None:
        try:
            msg = message.contents
            topic = msg.topic.decode()
            payload = ctypes.string_at(msg.payload, msg.payloadlen)
            # untagged subscriptions (see `_start_tagging`) carry no identifiers: not looked for
            sids = self._tag and libmosq.read_varints(props, libmosq.PROP_SUBSCRIPTION_IDENTIFIER)
        except Exception:
            logger.exception("dropping an undecodable message from %s", self.url)
            return
        self._deliver(topic, payload, sids or None)


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode()
