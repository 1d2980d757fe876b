"""An emulated device cluster on one Linux host: one network namespace per node, veth pairs into
a bridge, links rate-limited with tc (tbf; netem for delay when the kernel has it), and a CPU quota
per node (cgroup v2 cpu.max, else v1 cpu.cfs_quota_us). Everything is removed on exit, Ctrl-C or
failure. Needs root; says so, and says which piece this host refuses, rather than pretending."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from ddnn.emulation.cpu import CpuControl, enter_cgroup
from ddnn.emulation.netns import (
    NODE_IFNAME,
    add_node,
    check_host,
    delete_link,
    delete_namespace,
    has_qdisc,
    inside,
    shape,
)
from ddnn.emulation.netns import run as _run
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

SUBNET = "10.213.77"  # a private /24 that exists only inside the namespaces (the bridge has no IP)
MASTER_PORT = 29500  # node 0's rendezvous port, as torchrun's default


@dataclass
class EmulatedCluster:
    """`with EmulatedCluster(4, 100e6) as c: c.run(argv)`: node i is namespace `<name>-i` with
    address SUBNET.(i+1), its link shaped in both directions (a full-duplex switch port)."""

    nodes: int
    rate_bps: float
    delay_s: float = 0.0
    cpu: float | None = None  # cores per node
    slow: dict[int, float] = field(default_factory=dict)  # node -> cores, overrides cpu
    name: str = field(default_factory=lambda: f"dd{os.getpid() % 100000}")
    notes: list[str] = field(default_factory=list)  # what was emulated and what was not
    _namespaces: list[str] = field(default_factory=list, init=False)
    _links: list[str] = field(default_factory=list, init=False)
    _cgroups: list[Path] = field(default_factory=list, init=False)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)

    def address(self, node: int) -> str:
        return f"{SUBNET}.{node + 1}"

    def cores(self, node: int) -> float | None:
        return self.slow.get(node, self.cpu)

    def __enter__(self) -> EmulatedCluster:
        self._previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            self.setup()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
        signal.signal(signal.SIGTERM, self._previous)

    def setup(self) -> None:
        check_host("the emulated cluster", "use `ddnn train --nproc N` for an unshaped local run")
        if not 1 <= self.nodes <= 250:
            raise DdnnError("--nodes must be between 1 and 250")
        bad = [k for k in self.slow if not 0 <= k < self.nodes]
        if bad:
            raise DdnnError(f"--slow-node {bad}: nodes are numbered 0..{self.nodes - 1}")
        netem = self.delay_s > 0 and has_qdisc("netem")
        if self.delay_s > 0 and not netem:
            self.notes.append(
                "delay NOT emulated: this kernel has no netem qdisc (tc says 'Specified qdisc kind "
                "is unknown'); links are rate-limited with tbf only"
            )
            log.warning(self.notes[-1])
        bridge = f"{self.name}br"
        log.info("creating bridge %s for %d node(s)", bridge, self.nodes)
        _run("ip", "link", "add", bridge, "type", "bridge")
        self._links.append(bridge)
        _run("ip", "link", "set", bridge, "up")
        for i in range(self.nodes):
            log.info("creating namespace %s-%d (node %d/%d)", self.name, i, i + 1, self.nodes)
            self._add_node(i, bridge, netem)
        self.notes.append(f"links: {self.rate_bps / 1e6:g} Mbit/s each way per node (tc tbf)")
        self._setup_cpu()

    def _add_node(self, i: int, bridge: str, netem: bool) -> None:
        ns, host_end, node_end = f"{self.name}-{i}", f"{self.name}h{i}", f"{self.name}n{i}"
        self._namespaces.append(ns)
        self._links.append(host_end)
        add_node(ns, host_end, node_end, f"{self.address(i)}/24")
        _run("ip", "link", "set", host_end, "master", bridge, "up")
        delay = self.delay_s if netem else 0.0
        shape(host_end, self.rate_bps, netem_delay_s=delay)  # to the node (its download)
        shape(NODE_IFNAME, self.rate_bps, inside(ns), netem_delay_s=delay)  # its upload

    def _setup_cpu(self) -> None:
        if all(self.cores(i) is None for i in range(self.nodes)):
            return
        control = CpuControl.detect()
        if control.kind == "none":
            self.notes.append(f"CPU quotas NOT applied: {control.why}")
            log.warning(self.notes[-1])
            return
        log.info("applying CPU quotas (cgroup %s)", control.kind)
        for i in range(self.nodes):
            cores = self.cores(i)
            if cores is not None:
                path = control.create(f"{self.name}-{i}", cores)
                if path is not None:
                    self._cgroups.append(path)
        self.notes.append(f"CPU quotas via cgroup {control.kind} cpu controller")

    def popen(self, node: int, argv: Sequence[str], env: dict[str, str], out: IO[bytes] | None):
        """Start argv inside node's namespace and CPU cgroup."""
        cgroup = next((c for c in self._cgroups if c.name == f"{self.name}-{node}"), None)

        proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{self.name}-{node}", *argv],
            env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            preexec_fn=enter_cgroup(cgroup) if cgroup else None, start_new_session=True,
        )  # fmt: skip
        self._procs.append(proc)
        return proc

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every node's process, SIGKILL what is left after `grace` seconds."""
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in self._procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self) -> None:
        """Remove processes, namespaces, links and cgroups; best effort, every step tried."""
        self.stop_all()
        for ns in self._namespaces:
            delete_namespace(ns)
        for link in self._links:
            delete_link(link)
        for path in self._cgroups:
            CpuControl.remove(path)
        self._namespaces, self._links, self._cgroups, self._procs = [], [], [], []


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so `with EmulatedCluster` cleans up when killed politely


def node_env(
    cluster: EmulatedCluster, node: int, world: int, port: int = MASTER_PORT
) -> dict[str, str]:
    """The torch.distributed environment of one node (what torchrun would set per host)."""
    cores = cluster.cores(node)
    return dict(os.environ) | {
        "RANK": str(node), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": cluster.address(0), "MASTER_PORT": str(port),
        "GLOO_SOCKET_IFNAME": NODE_IFNAME,
        "OMP_NUM_THREADS": str(max(1, math.ceil(cores or 1))),
        "DDNN_CLUSTER_RATE_BPS": str(cluster.rate_bps), "PYTHONUNBUFFERED": "1",
    }  # fmt: skip


def run_on_cluster(
    cluster: EmulatedCluster, argv: Sequence[str], log_dir: Path, grace: float = 30.0
) -> list[int]:
    """Run argv on every node (node 0's output on this terminal, others' in log_dir/node<i>.log);
    once a node fails, the rest get `grace` seconds to fail on their own, then are stopped."""
    log_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(cluster.nodes):
        log.info("starting node %d/%d at %s", i + 1, cluster.nodes, cluster.address(i))
        out = None if i == 0 else (log_dir / f"node{i}.log").open("wb")
        if out is not None:
            files.append(out)
        cluster.popen(i, argv, node_env(cluster, i, cluster.nodes), out)
    log.info(
        "waiting for the %d node(s) to meet at %s:%d (the rendezvous) and finish; node 0's "
        "output follows, the others' is in %s",
        cluster.nodes, cluster.address(0), MASTER_PORT, log_dir,
    )  # fmt: skip
    try:
        failed_at: float | None = None
        procs = cluster._procs
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace:
                log.warning("a node failed; stopping the others after %.0f s", grace)
                cluster.stop_all()
            time.sleep(0.2)
        return [int(p.returncode) for p in procs]
    finally:
        for f in files:
            f.close()
