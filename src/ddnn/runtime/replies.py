"""Error replies that never fail: whatever arrived, the sender hears what was wrong when it can
be named, and the receiving process keeps serving."""

from __future__ import annotations

import logging

from ddnn.errors import DdnnError
from ddnn.runtime.metrics import Metrics
from ddnn.runtime.protocol import TOPIC_PREFIX, parse_request_topic, reply_topic
from ddnn.runtime.transport import Transport
from ddnn.runtime.wire import ErrorFrame, Request, Status, decode_frame, encode_frame

log = logging.getLogger(__name__)


def publish_quietly(transport: Transport, topic: str, payload: bytes) -> None:
    """Publish, logging instead of raising (disconnected: the requester's deadline covers it)."""
    try:
        transport.publish(topic, payload)
    except DdnnError as exc:
        log.warning("could not publish to %s: %s", topic, exc)


def reply_error(
    transport: Transport, metrics: Metrics, request: Request, code: Status, message: str
) -> None:
    log.warning("request %d from %s: %s", request.request_id, request.device_id, message)
    metrics.inc("errors_total", "error replies", code=code.name.lower())
    payload = encode_frame(ErrorFrame(request.request_id, code, message))
    publish_quietly(transport, reply_topic(request.device_id), payload)


def answer_bad_message(
    transport: Transport, metrics: Metrics, topic: str, payload: bytes, code: Status, message: str,
    prefix: str = TOPIC_PREFIX,
) -> None:  # fmt: skip
    """An error for a message that may not even decode: to its request id when readable, else
    to the device named by the topic, else only to the log."""
    try:
        frame = decode_frame(payload)
    except DdnnError:
        frame = None
    if isinstance(frame, Request):
        reply_error(transport, metrics, frame, code, message)
        return
    metrics.inc("errors_total", "error replies", code=code.name.lower())
    try:
        _, _, device = parse_request_topic(topic, prefix=prefix)
    except DdnnError:
        log.warning("unanswerable message on %s: %s", topic, message)
        return
    log.warning("message from %s on %s: %s", device, topic, message)
    publish_quietly(transport, reply_topic(device), encode_frame(ErrorFrame(None, code, message)))
