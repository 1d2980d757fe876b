"""What a TCP/IP stream costs on a link beyond its payload: one definition shared by the
emulated link (relay.py paces each chunk by it) and the planner (planning/wire.py predicts by it),
so the two cannot drift apart.

Derived, not measured: IPv4 (20 B) and TCP with the timestamp option Linux sends by default
(32 B) per segment of at most one MSS of a 1500-byte MTU. Link-layer framing and ACKs are left
out.
"""

from __future__ import annotations

import math

TCP_IP_HEADER = 20 + 32  # IPv4 + TCP with timestamps, per segment
MTU = 1500
MSS = MTU - TCP_IP_HEADER


def on_wire(payload_bytes: int) -> int:
    """Bytes on the link for `payload_bytes` of a TCP stream sent in one go: the payload plus
    the headers of the segments carrying it (at least one)."""
    return payload_bytes + TCP_IP_HEADER * max(1, math.ceil(payload_bytes / MSS))


def serialization_s(payload_bytes: int, rate_bps: float) -> float:
    """Seconds a link of `rate_bps` takes to put `payload_bytes` (with headers) on the wire."""
    return on_wire(payload_bytes) * 8 / rate_bps
