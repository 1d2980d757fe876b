"""The planner's request bytes are the bytes the runtime's device really sends."""

from __future__ import annotations

import numpy as np
import pytest

from ddnn.emulation.tcpip import TCP_IP_HEADER, on_wire
from ddnn.planning.wire import server_only_wire, split_wire
from ddnn.runtime.config import DeviceConfig
from ddnn.runtime.device import DeviceClient
from ddnn.runtime.memory import MemoryTransport
from ddnn.runtime.protocol import DEVICE_SERVER, SERVER_ONLY
from ddnn.store.artifact import open_model


@pytest.mark.parametrize("mode", [DEVICE_SERVER, SERVER_ONLY])
def test_predicted_request_bytes_match_what_a_device_sends(tiny_ddnn, mode):
    model = open_model(tiny_ddnn).load()
    wire = split_wire(model) if mode == DEVICE_SERVER else server_only_wire(model)
    transport = MemoryTransport(f"wire-{mode.replace('+', '-')}")
    # no server on the hub: every sample is offloaded, times out and records what it sent
    config = DeviceConfig(device_id="dev0", deadline_ms=5, thresholds=(0.0,), mode=mode)
    device = DeviceClient(transport, tiny_ddnn, config).start()
    try:
        view = np.random.default_rng(0).random(model.spec.view_shape, dtype=np.float32)
        record = device.infer(view, 0)
    finally:
        device.close()
        transport.close()
    assert record.offloaded
    assert (record.frame_bytes, record.packet_bytes) == (wire.request_frame, wire.request_mqtt)


def test_tcp_ip_headers_are_added_per_segment():
    assert on_wire(100) == 100 + TCP_IP_HEADER
    assert on_wire(1448) == 1448 + TCP_IP_HEADER
    assert on_wire(1449) == 1449 + 2 * TCP_IP_HEADER
