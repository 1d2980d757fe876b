"""Error replies that never fail: whatever arrived, the sender hears what was wrong when it can
be named, and the receiving process keeps serving.

Every reply goes to the device that owns the topic the message came in on (`dd/q/.../<device>`,
which the broker's ACL lets only that device publish to), never to a device named inside the
payload: otherwise one device could make a tier send a forged error, under a request id of its
choosing, to another device waiting on that id.
"""

from __future__ import annotations

import logging

from ddnn.errors import DdnnError
from ddnn.runtime.metric_names import ERRORS
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import TOPIC_PREFIX, parse_request_topic, reply_topic
from ddnn.runtime.ratelog import RateLimitedLog
from ddnn.runtime.transport import Transport
from ddnn.runtime.wire import (
    MAGIC,
    REQUEST_ID_BYTES,
    ErrorFrame,
    Kind,
    Request,
    Status,
    encode_frame,
)

log = logging.getLogger(__name__)
warnings = RateLimitedLog(log)  # a flood of bad messages must not flood the log


def publish_quietly(
    transport: Transport, topic: str, payload: bytes, *, retain: bool = False
) -> None:
    """Publish, logging instead of raising (disconnected: the requester's deadline covers it)."""
    try:
        transport.publish(topic, payload, retain=retain)
    except DdnnError as exc:
        warnings.warning("publish", "could not publish to %s: %s", topic, exc)


def readable_request_id(payload: bytes) -> int | None:
    """The request id of a request frame that may not decode, when its first bytes say it is a
    request (every frame version starts its body with the u64 id); None when unreadable."""
    if len(payload) < REQUEST_ID_BYTES.stop or payload[:2] != MAGIC or payload[3] != Kind.REQUEST:
        return None
    return int.from_bytes(payload[REQUEST_ID_BYTES], "little") or None  # ids start at 1


def send_error(
    transport: Transport, metrics: Metrics, device: str, request_id: int | None, code: Status,
    message: str,
) -> None:  # fmt: skip
    """ErrorFrame(request_id, code, message) to `device`, which must be the owner of the topic
    the failed message came in on."""
    metrics.inc(*ERRORS, code=code.name.lower())
    warnings.warning(
        code.name.lower(), "request %s from %s: %s", request_id, device, message, metrics=metrics
    )
    payload = encode_frame(ErrorFrame(request_id, code, message))
    publish_quietly(transport, reply_topic(device), payload)


def reply_error(
    transport: Transport, metrics: Metrics, request: Request, code: Status, message: str
) -> None:
    """An error for a request that passed `read_request`: its device is its topic's owner."""
    send_error(transport, metrics, request.device_id, request.request_id, code, message)


def answer_bad_message(
    transport: Transport, metrics: Metrics, topic: str, payload: bytes, code: Status, message: str,
    prefix: str = TOPIC_PREFIX,
) -> None:  # fmt: skip
    """An error for a message that may not even decode: to the device that owns `topic` (under
    `prefix`), with the request id when it can be read, else only to the log."""
    try:
        _, _, device = parse_request_topic(topic, prefix=prefix)
    except DdnnError:
        metrics.inc(*ERRORS, code=code.name.lower())
        warnings.warning("unanswerable", "unanswerable message on %s: %s", topic, message)
        return
    send_error(transport, metrics, device, readable_request_id(payload), code, message)
