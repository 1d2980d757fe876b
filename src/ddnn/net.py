"""Loopback ports for the processes ddnn starts itself (a private Mosquitto, metrics endpoints,
a torch rendezvous). Below every package, so the runtime and distributed training share it.

The port is free when asked, not reserved: another process can take it before the caller binds
it, which on a busy machine shows as a start-up failure that a retry cures.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on `host` nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
