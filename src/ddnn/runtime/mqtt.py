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

import logging
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ddnn.errors import DdnnError
from ddnn.runtime.mqttbase import QOS, BrokerTransport

logger = logging.getLogger(__name__)


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


class MqttTransport(BrokerTransport):
    """A connection to an MQTT v5 broker through paho; the constructor returns once CONNACK
    arrived. The shared bookkeeping is `BrokerTransport`'s."""

    def _setup(
        self,
        username: str | None,
        password: str | None,
        tls: bool | Mapping[str, Any] | ssl.SSLContext,
        reconnect_delay: tuple[float, float],
    ) -> None:
        self._client = self._make_client(username, password, tls)
        self._client.connect_timeout = self._timeout
        self._client.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]
        self._client.max_queued_messages_set(self._max_queued)

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
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_subscribe = self._paho_subscribe
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        if username is not None:
            client.username_pw_set(username, password)
        _configure_tls(client, tls)
        return client

    def _open(self, host: str, port: int, keepalive: int) -> None:
        self._client.connect(host, port, keepalive, properties=self._connect_properties())

    def _start_loop(self) -> None:
        self._client.loop_start()

    def _connect_properties(self) -> Properties:
        """Announce our Maximum Packet Size: the broker then drops larger messages instead of
        delivering them, so an oversized publish costs this process nothing (a 50 MB request
        on a broker without a size limit took a server to 2 GB)."""
        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = self._configured_max
        return props

    def _send_publish(self, topic: str, payload: bytes, retain: bool) -> int:
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        rc = info.rc
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            logger.debug("not connected to %s: %r is queued until reconnect", self.url, topic)
        elif rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise self._backlog_error()
        elif rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise DdnnError(f"publish to {topic!r} failed: {paho.error_string(rc)}")
        return info.mid

    def _subscribe_packet(self, topic_filter: str, sid: int | None) -> int | None:
        props = None
        if sid is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sid
        rc, mid = self._client.subscribe(
            topic_filter, options=SubscribeOptions(qos=QOS), properties=props
        )
        return mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def _unsubscribe_packet(self, topic_filter: str) -> None:
        self._client.unsubscribe(topic_filter)

    def _shutdown(self) -> None:
        """Disconnect and join paho's network thread."""
        self._client.disconnect()
        if self._on_net_thread:
            self._client.loop_stop()  # cannot join itself; the loop ends after this callback
            return
        self._client.loop_stop()
        # paho closes its wake-up socketpair only in Client.__del__; free the fds now.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset(sockpair_only=True)

    # --- paho's callbacks: run on its network thread, must never raise ----------------------

    def _paho_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        broker_max = getattr(properties, "MaximumPacketSize", None)
        self._on_connack(str(reason) if reason.is_failure else None, broker_max)

    def _paho_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._on_connection_lost(str(reason))

    def _paho_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._on_suback(mid, [str(code) for code in codes if code.is_failure])

    def _paho_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.value:  # success needs no bookkeeping here, nor the reason's text
            self._on_puback(mid, reason.value, str(reason))

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
            payload = bytes(message.payload)  # no-op for bytes; handlers are typed for bytes
            # untagged subscriptions (see `_start_tagging`) carry no identifiers: not looked for
            sids = self._tag and getattr(message.properties, "SubscriptionIdentifier", None)
        except Exception:
            logger.exception("dropping an undecodable message from %s", self.url)
            return
        self._deliver(topic, payload, sids or None)
