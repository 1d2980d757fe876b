"""Network namespaces, veth pairs and tbf rate limits through `ip` and `tc`: the pieces both
`ddnn cluster` and the emulated devices build their links from.

tbf shapes the rate of what leaves an interface, so a link is shaped on both ends of its veth
pair (the node's end: its upload; the host's end: its download). Delay needs netem, which this
kernel lacks ("Specified qdisc kind is unknown"); `relay.py` provides it instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

NODE_IFNAME = "eth0"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One ip/tc call; a failure names the command and the kernel's answer."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise DdnnError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def inside(ns: str) -> tuple[str, ...]:
    """The prefix that runs a command inside namespace `ns`."""
    return ("ip", "netns", "exec", ns)


def check_host(what: str, instead: str) -> None:
    """Root and iproute2 are required; the message says how to get them, or what to run
    `instead`."""
    if os.geteuid() != 0:
        raise DdnnError(
            f"{what} needs root (network namespaces, tc, cgroups): run it with sudo, or {instead}"
        )
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise DdnnError(
            f"{', '.join(missing)} not found: apt-get update && apt-get install -y iproute2"
        )


def has_qdisc(kind: str) -> bool:
    """Whether the kernel offers a tc qdisc (netem is often missing in containers)."""
    probe = f"ddq{os.getpid() % 100000}"
    run("ip", "link", "add", probe, "type", "veth", "peer", "name", probe + "p", check=False)
    ok = run("tc", "qdisc", "add", "dev", probe, "root", kind, check=False).returncode == 0
    run("ip", "link", "del", probe, check=False)
    return ok


def add_node(ns: str, host_end: str, node_end: str, address: str) -> None:
    """Namespace `ns` with one veth pair to the host: `node_end` moves in as NODE_IFNAME with
    `address` (CIDR), `host_end` stays here, up, for the caller to bridge or address."""
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
    run("ip", "link", "set", node_end, "netns", ns)
    run(*inside(ns), "ip", "link", "set", node_end, "name", NODE_IFNAME)
    run(*inside(ns), "ip", "addr", "add", address, "dev", NODE_IFNAME)
    run(*inside(ns), "ip", "link", "set", NODE_IFNAME, "up")
    run(*inside(ns), "ip", "link", "set", "lo", "up")


def shape(
    dev: str,
    rate_bps: float,
    prefix: Sequence[str] = (),
    *,
    netem_delay_s: float = 0.0,
    queue_s: float | None = None,
    change: bool = False,
) -> None:
    """Limit what leaves `dev` to `rate_bps` (tbf; netem with a delay when asked, on kernels
    that have it). `queue_s`: queue up to that many seconds of traffic (at least 256 KiB)
    instead of dropping after 100 ms: a sender on the node itself then waits, as behind a slow
    radio, rather than losing packets and stalling on TCP's retransmission timer. `change`:
    alter the qdisc in place, live, without dropping the queue."""
    rate = f"{int(rate_bps)}bit"
    verb = "change" if change else "add"
    if netem_delay_s > 0:
        delay = f"{netem_delay_s * 1e6:.0f}us"
        run(*prefix, "tc", "qdisc", verb, "dev", dev, "root", "netem", "delay", delay,
            "rate", rate, "limit", "10000")  # fmt: skip
        return
    # burst: about 1 ms of traffic, at least a few full frames (a smaller bucket than one
    # frame would stall the link); latency: how long a packet may queue before it is dropped
    burst = max(4 * 1514, int(rate_bps / 8 / 1000))
    if queue_s is None:
        queue = ("latency", "100ms")
    else:
        queue = ("limit", str(max(256 * 1024, int(rate_bps / 8 * queue_s))))
    run(*prefix, "tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate", rate,
        "burst", str(burst), *queue)  # fmt: skip


def delete_namespace(ns: str) -> None:
    """Deleting a namespace deletes its veth end, and with it the pair."""
    run("ip", "netns", "del", ns, check=False)


def delete_link(dev: str) -> None:
    run("ip", "link", "del", dev, check=False)


def namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line]


def links() -> list[str]:
    """Interface names in this namespace (`veth0@if3` -> `veth0`)."""
    out = run("ip", "-o", "link", "show").stdout.splitlines()
    return [line.split(": ")[1].split("@")[0] for line in out if ": " in line]


def namespace_pids(ns: str) -> list[int]:
    return [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]
