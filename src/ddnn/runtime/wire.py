"""The wire format in one import: frames, tensors and topics, re-exported from their modules.

`fields` (checks of frame fields), `tensors` (encodings and `Tensor`), `frames` (`Request`,
`Reply`, `ErrorFrame`), `codec` (`encode_frame` / `decode_frame`) and `protocol` (topics and
the rest of the vocabulary) each hold one part; this module names none of its own, so
`from ddnn.runtime.wire import X` and `from <its home> import X` give the same object.
"""

from __future__ import annotations

from ddnn.runtime.codec import (
    MAGIC,
    REQUEST_ID_BYTES,
    VERSION,
    decode_frame,
    encode_answer,
    encode_frame,
)
from ddnn.runtime.fields import FrameError, check_identifier
from ddnn.runtime.frames import (
    MAX_MESSAGE_BYTES,
    ErrorFrame,
    Frame,
    Kind,
    Reply,
    Request,
    Status,
    frame_name,
)
from ddnn.runtime.protocol import (
    SERVER_GROUP,
    TOPIC_PREFIX,
    parse_request_topic,
    reply_topic,
    request_filter,
    request_topic,
    topic_of,
)
from ddnn.runtime.tensors import (
    MAX_NDIM,
    Encoding,
    Tensor,
    decode_tensor,
    encode_tensor,
    parse_encoding,
    payload_size,
)

__all__ = [
    "MAGIC",
    "MAX_MESSAGE_BYTES",
    "MAX_NDIM",
    "REQUEST_ID_BYTES",
    "SERVER_GROUP",
    "TOPIC_PREFIX",
    "VERSION",
    "Encoding",
    "ErrorFrame",
    "Frame",
    "FrameError",
    "Kind",
    "Reply",
    "Request",
    "Status",
    "Tensor",
    "check_identifier",
    "decode_frame",
    "decode_tensor",
    "encode_answer",
    "encode_frame",
    "encode_tensor",
    "frame_name",
    "parse_encoding",
    "parse_request_topic",
    "payload_size",
    "reply_topic",
    "request_filter",
    "request_topic",
    "topic_of",
]
