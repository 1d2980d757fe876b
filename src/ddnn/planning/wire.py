"""Bytes a request and its reply take on the link, derived from the wire format.

The ddnn frame and the MQTT PUBLISH packet are exact: the frame is encoded here by the runtime's
own codec (runtime/codec.py) with a tensor of the size the device sends, and the packet size is
the transport's `publish_packet_size` for the topic it travels on. TCP/IP is derived, not
measured, by `emulation/tcpip.py` (52 B of headers per segment), the same definition the
emulated link paces its chunks by. Link-layer framing, TCP ACKs and the QoS-1 PUBACKs are left
out: they are small and travel off the request's critical path.
"""

from __future__ import annotations

import math

import numpy as np

from ddnn.emulation.tcpip import on_wire
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import binary_output
from ddnn.planning.records import WireBytes
from ddnn.runtime.codec import encode_answer, encode_frame
from ddnn.runtime.frames import Request
from ddnn.runtime.protocol import default_device_id, reply_topic, request_topic
from ddnn.runtime.tensors import Encoding, Tensor, encode_tensor
from ddnn.runtime.transport import publish_packet_size

_REQUEST_ID = 1 << 40  # request ids are fixed-width: any value gives the same size


def _wire(model: HierarchicalModel, section: int, tensor: Tensor) -> WireBytes:
    spec = model.spec
    device_id = default_device_id(0)
    request = Request(_REQUEST_ID, spec.name, 1, device_id, 0, section, (tensor,))
    frame = len(encode_frame(request))
    mqtt = publish_packet_size(request_topic(spec.name, section, device_id), frame)
    reply = len(encode_answer(_REQUEST_ID, 0, len(spec.exit_sections) - 1, 0.5, 0.1, 0.1))
    reply_mqtt = publish_packet_size(reply_topic(device_id), reply)
    return WireBytes(frame, mqtt, on_wire(mqtt), reply, reply_mqtt, on_wire(reply_mqtt))


def _raw_view(model: HierarchicalModel) -> Tensor:
    view = np.zeros((1, *model.spec.view_shape), dtype=np.float32)  # [1, C, h, w]
    return encode_tensor(view, Encoding.UNIT8, name="x")


def split_wire(model: HierarchicalModel) -> WireBytes | None:
    """The offload request of a device+server deployment (as runtime/device.py builds it);
    None for a model without a device section."""
    spec = model.spec
    if spec.device_section is None or len(spec.sections) < 2:
        return None
    if spec.sections[1].input == "raw":  # Big-Little: the big net sees the input
        return _wire(model, 1, _raw_view(model))
    section = model.devices[0]
    shape = (1, *section.out_shape)
    count = math.prod(shape)
    if binary_output(section):  # type: ignore[arg-type]
        tensor = Tensor("x", Encoding.BITS, shape, bytes(math.ceil(count / 8)))
    else:
        tensor = encode_tensor(np.zeros(shape, dtype=np.float32), Encoding.FLOAT32, name="x")
    return _wire(model, 1, tensor)


def server_only_wire(model: HierarchicalModel) -> WireBytes:
    """A server-only deployment's request: the raw view, to section 0."""
    return _wire(model, 0, _raw_view(model))
