"""`EmulatedDevices`: N device "hosts" on this machine, each with its own network namespace, a
link shaped to a LinkProfile (tbf as the kernel's cap on the rate, both directions; a pacing,
delaying relay for the rate a single message sees and the one-way delay) and a DeviceProfile's
speed from this host's calibration: the device's inference dilated by the slowdown, and
optionally (`cpu_quota`) a CPU quota on the whole process.

Device i reaches the broker only through its link: `broker_url(i)` is its relay, listening on
the host's end of its veth pair. The broker, server and edge stay on the host, unemulated.
Everything is removed on exit, Ctrl-C, SIGTERM or an exception; what a SIGKILLed run left
behind is swept at the next start (`leftovers.py`). Missing root, iproute2 or a cpu controller
is an error naming the missing piece: an emulation never silently runs unemulated.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from ddnn.emulation import netns
from ddnn.emulation.calibrate import Calibration, host_calibration
from ddnn.emulation.cpu import SLOWDOWN_ENV, CpuControl, cfs_period_us, enter_cgroup
from ddnn.emulation.leftovers import namespace_name, sweep, veth_names
from ddnn.emulation.profiles import DeviceProfile, LinkProfile
from ddnn.emulation.relay import DelayRelay
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

POOL = ipaddress.ip_network("10.214.0.0/16")  # one /24 per emulation, a /30 per device
QUEUE_S = 1.0  # tbf queues up to a second of traffic rather than dropping (netns.shape)
MAX_DEVICES = 63
MECHANISM = {
    "inference": "the device section's CPU time x host GFLOPS / profile GFLOPS, slept out",
    "rate": "the relay paces each chunk (with TCP/IP headers) at the rate, each way; tc tbf on "
    "both ends of a veth pair into the device's namespace caps it in the kernel",
    "delay": "a TCP relay on the host end holding each chunk for the one-way delay, both ways",
}
QUOTA_MECHANISM = "cgroup cfs quota: profile GFLOPS / host GFLOPS of one core (emulation/cpu.py)"


@dataclass
class _Device:
    ns: str
    host_end: str
    host_ip: str
    node_ip: str
    relay: DelayRelay | None = None
    cgroup: Path | None = None


class EmulatedDevices:
    """`with EmulatedDevices(2, broker=("127.0.0.1", port), device=pi3, link=wifi) as emu:
    emu.popen(0, argv_with(emu.broker_url(0)))`. Built inert; entering sets everything up.
    `cpu_quota=False`: the device's compute is emulated by dilation only (no cgroups, its other
    work runs at host speed); `cpu_from_start=False`: the cgroups start unlimited (loading torch
    and a model at 2 % of a core takes minutes) until `limit_cpu()`."""

    def __init__(
        self,
        count: int,
        *,
        broker: tuple[str, int],
        device: DeviceProfile | None = None,
        link: LinkProfile | None = None,
        calibration: Calibration | None = None,
        cpu_quota: bool = True,
        cpu_from_start: bool = True,
    ) -> None:
        if not 1 <= count <= MAX_DEVICES:
            raise DdnnError(f"an emulation has 1 to {MAX_DEVICES} devices, not {count}")
        if device is None and link is None:
            raise DdnnError("nothing to emulate: give a device profile, a link profile or both")
        self.count, self.broker = count, broker
        self.device, self.link = device, link
        self.calibration = calibration
        self.cpu_quota, self.cpu_from_start = cpu_quota, cpu_from_start
        self.notes: list[str] = []
        self.link_changes: list[dict[str, float]] = []
        self._devices: list[_Device] = []
        self._control: CpuControl | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._previous: Any = None
        self._entered = False

    @property
    def slowdown(self) -> float | None:
        """Host speed over device speed on the reference workload (None: CPU not emulated)."""
        if self.device is None or self.calibration is None:
            return None
        return self.calibration.slowdown(self.device)

    @property
    def quota_cores(self) -> float | None:
        """The device's share of a host core (None: no quota is applied)."""
        if self.device is None or self.calibration is None or not self.cpu_quota:
            return None
        return self.calibration.quota_cores(self.device)

    # -- set-up and clean-up ---------------------------------------------------------------

    def __enter__(self) -> EmulatedDevices:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _sigterm)
        self._entered = True
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _setup(self) -> None:
        netns.check_host("an emulated device", "run without --device-profile and --link")
        if self.device is not None and self.cpu_quota:
            self._control = CpuControl.detect()
            if self._control.kind == "none":
                raise DdnnError(
                    f"no CPU quota possible on this host ({self._control.why}): drop "
                    "--device-profile to emulate the link only"
                )
        sweep()
        if self.link is not None:
            self._setup_links(self.link)
        else:
            self._devices = [_Device("", "", "", "") for _ in range(self.count)]
            self.notes.append(
                "link NOT emulated (no link profile): devices use the broker directly"
            )
        if self.device is not None:
            self._setup_cpu(self.device)
        else:
            self.notes.append("CPU NOT emulated (no device profile): devices run at host speed")
        self.notes.append(
            "not emulated: loss, jitter, the device's RAM and cores (one thread computes), "
            "its memory bandwidth, and Python overhead's different ratio on ARM; the broker, "
            "server and edge run on this host"
        )

    def _setup_links(self, link: LinkProfile) -> None:
        rate = link.rate_mbit * 1e6
        with _subnet_lock():
            subnet = _free_subnet()
            hosts = list(subnet.subnets(new_prefix=30))
            for i in range(self.count):
                host_ip, node_ip = (str(a) for a in list(hosts[i].hosts())[:2])
                host_end, node_end = veth_names(i)
                dev = _Device(namespace_name(i), host_end, host_ip, node_ip)
                self._devices.append(dev)
                log.info("device %d/%d: namespace %s at %s", i + 1, self.count, dev.ns, node_ip)
                netns.add_node(dev.ns, host_end, node_end, f"{node_ip}/30")
                netns.run("ip", "addr", "add", f"{host_ip}/30", "dev", host_end)
                netns.run("ip", "link", "set", host_end, "up")
        for dev in self._devices:
            netns.shape(dev.host_end, rate, queue_s=QUEUE_S)  # to the device: its download
            netns.shape(netns.NODE_IFNAME, rate, netns.inside(dev.ns), queue_s=QUEUE_S)  # upload
            dev.relay = DelayRelay(
                (dev.host_ip, 0), self.broker, link.delay_ms / 1000,
                rate_bps=rate, name=f"relay-{dev.ns}",
            ).start()  # fmt: skip
        self.notes.append(
            f"link {link.name}: {link.rate_mbit:g} Mbit/s each way, {link.delay_ms:g} ms one "
            "way (a TCP relay paces each chunk at the rate with its TCP/IP headers, then delays "
            "it; tc tbf caps the rate in the kernel; no loss or jitter)"
        )

    def _setup_cpu(self, device: DeviceProfile) -> None:
        if self.calibration is None:
            self.calibration = host_calibration()  # the one `ddnn profile` used, if fresh
        self.notes.append(
            f"device inference dilated x{self.calibration.slowdown(device):.1f} ({device.name}: "
            f"{device.gflops:g} GFLOPS / host {self.calibration.host_gflops:.1f} GFLOPS): it "
            "sleeps that multiple of its host CPU time"
        )
        if not self.cpu_quota:
            self.notes.append(
                "no CPU quota: the device's work outside inference (encoding, MQTT, Python if any) "
                "runs at host speed, an understatement of a real device's"
            )
            return
        assert self._control is not None
        cores = self.quota_cores
        assert cores is not None
        for i, dev in enumerate(self._devices):
            start = cores if self.cpu_from_start else None
            dev.cgroup = self._control.create(dev.ns or namespace_name(i), start)
        self.notes.append(
            f"CPU {device.name}: {device.gflops:g} GFLOPS / host {self.calibration.host_gflops:.1f}"
            f" GFLOPS = {cores:.4f} of a core (cgroup {self._control.kind}, period "
            f"{cfs_period_us(cores) / 1000:g} ms)"
            + ("" if self.cpu_from_start else "; limited from the start signal, not while loading")
        )

    def limit_cpu(self, on: bool = True, devices: Sequence[int] | None = None) -> None:
        """Apply (or lift) the device quota on every device's cgroup (or those listed), live."""
        cores = self.quota_cores
        if self._control is None or cores is None:
            return
        for i in range(self.count) if devices is None else devices:
            cgroup = self._devices[i].cgroup
            if cgroup is not None:
                self._control.set_cores(cgroup, cores if on else None)

    def close(self) -> None:
        """Stop the processes, then remove relays, namespaces (and veths) and cgroups; every
        step is tried, whatever failed before it. Idempotent."""
        if not self._entered:
            return
        self._entered = False
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for dev in self._devices:
            if dev.relay is not None:
                dev.relay.close()
            if dev.ns:
                netns.delete_namespace(dev.ns)
                netns.delete_link(dev.host_end)  # gone with the namespace, unless half-built
            if dev.cgroup is not None:
                CpuControl.remove(dev.cgroup)
        self._devices, self._procs = [], []
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    # -- use -------------------------------------------------------------------------------

    def broker_url(self, i: int) -> str:
        """The URL device i must use: its relay, at the far end of its emulated link."""
        dev = self._devices[i]
        if dev.relay is None or dev.relay.address is None:
            return f"mqtt://{self.broker[0]}:{self.broker[1]}"
        host, port = dev.relay.address
        return f"mqtt://{host}:{port}"

    def cgroup(self, i: int) -> Path | None:
        """Device i's cgroup folder (its cpu.stat says how often the quota throttled it)."""
        return self._devices[i].cgroup

    def popen(self, i: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside device i's namespace and cgroup (Popen's keywords pass through)."""
        if "preexec_fn" in kwargs:
            raise DdnnError("EmulatedDevices.popen sets preexec_fn itself (to enter the cgroup)")
        dev = self._devices[i]
        prefix = netns.inside(dev.ns) if dev.ns else ()
        pre = enter_cgroup(dev.cgroup) if dev.cgroup is not None else None
        if self.slowdown is not None:  # the device's inference dilates itself (cpu.dilated)
            kwargs["env"] = {**(kwargs.get("env") or os.environ), SLOWDOWN_ENV: f"{self.slowdown}"}
        proc = subprocess.Popen([*prefix, *argv], preexec_fn=pre, **kwargs)
        self._procs.append(proc)
        return proc

    def set_link(self, rate_mbit: float | None = None, delay_ms: float | None = None) -> None:
        """Change every device's link live: `tc qdisc change` and the relays' pacing for the
        rate, their hold time for the delay (chunks already held keep theirs)."""
        if self.link is None:
            raise DdnnError("no link is emulated; start with a link profile to change it")
        link = replace(
            self.link,
            rate_mbit=self.link.rate_mbit if rate_mbit is None else rate_mbit,
            delay_ms=self.link.delay_ms if delay_ms is None else delay_ms,
        )
        rate = link.rate_mbit * 1e6
        for dev in self._devices:
            if rate_mbit is not None:
                netns.shape(dev.host_end, rate, queue_s=QUEUE_S, change=True)
                netns.shape(netns.NODE_IFNAME, rate, netns.inside(dev.ns), queue_s=QUEUE_S,
                            change=True)  # fmt: skip
            if dev.relay is not None:
                dev.relay.set_delay(link.delay_ms / 1000, rate)
        self.link = link
        self.link_changes.append({"rate_mbit": link.rate_mbit, "delay_ms": link.delay_ms})
        log.info("link now %g Mbit/s, %g ms one way", link.rate_mbit, link.delay_ms)

    def to_dict(self) -> dict[str, Any]:
        """For reports: the profiles, the calibration, the quota, the mechanism, the notes."""
        return {
            "device_profile": asdict(self.device) if self.device else None,
            "link_profile": asdict(self.link) if self.link else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "quota_cores": self.quota_cores,
            "slowdown": self.slowdown,
            "cfs_period_us": cfs_period_us(self.quota_cores) if self.quota_cores else None,
            "link_changes": list(self.link_changes),
            "mechanism": MECHANISM | ({"cpu": QUOTA_MECHANISM} if self.quota_cores else {}),
            "notes": list(self.notes),
        }


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so `with EmulatedDevices` cleans up when killed politely


@contextmanager
def _subnet_lock() -> Iterator[None]:
    """Concurrent emulations pick their /24 one at a time (a file lock across processes)."""
    with open(Path(tempfile.gettempdir()) / "ddnn-emulation.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of POOL with no address on this host's interfaces."""
    out = netns.run("ip", "-4", "-o", "addr", "show").stdout.split()
    used = {ipaddress.ip_interface(w).network for w in out if "/" in w and w[0].isdigit()}
    for subnet in POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise DdnnError(f"no free /24 left in {POOL} for emulated links (leftovers? ip -4 addr)")
