"""Bytes sent upward per sample, counted as DDNN does: class scores (4 bytes a class) go from each
device to an off-device aggregator, and packed features (1 bit a binary value, else 4 bytes) go up
only for the samples that do not exit locally."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import payload_bytes


@dataclass(frozen=True)
class CommCosts:
    """Per-device byte costs of one model, derived from its sections."""

    devices: int
    score_bytes: int  # per device, every sample: exit scores to an off-device aggregator
    uplink_bytes: int  # per device, samples that pass the local exit
    raw_bytes: int  # per device: the raw view as uint8, what a server-only system sends
    edge_bytes: int  # edge -> cloud per sample passing the edge exit (0 without an edge)

    @classmethod
    def of(cls, model: HierarchicalModel) -> CommCosts:
        spec = model.spec
        raw = math.prod(spec.view_shape)
        dev = spec.device_section
        if dev is None:  # the whole model runs on the server: the device sends its raw input
            return cls(1, 0, raw, raw, 0)
        scores = 4 * spec.exit_num_classes(dev) if spec.devices > 1 and dev.exit else 0
        upper = list(model.upper.values())
        first_up = upper[0].spec if upper else None
        uplink = (
            raw
            if first_up is not None and first_up.input == "raw"
            else payload_bytes(
                model.devices[0]  # type: ignore[arg-type]
            )
        )
        edge = payload_bytes(upper[0]) if len(upper) > 1 and upper[0].spec.tier == "edge" else 0  # type: ignore[arg-type]
        return cls(spec.devices, scores, uplink, raw, edge)
