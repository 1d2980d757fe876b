"""What an emulation creates is named after the pid that made it, so a later run can tell an
orphan (its pid is gone: the process died by SIGKILL, or the machine lost power mid-run) from
another live run's, and remove only the orphans.

Names: namespace `ddnn-emu-<pid>-<i>`, host veth end `dde<pid>h<i>` (15 characters at most,
the kernel's limit), cgroup `ddnn-emu-<pid>-<i>` under the cpu controller. Relays are threads
of the emulating process, so they die with it; processes left inside an orphaned namespace or
cgroup are killed.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from contextlib import suppress
from dataclasses import dataclass, field

from ddnn.emulation import netns
from ddnn.emulation.cpu import CpuControl

log = logging.getLogger(__name__)

PREFIX = "ddnn-emu"
_NS = re.compile(rf"^{PREFIX}-(\d+)-\d+$")
_VETH = re.compile(r"^dde(\d+)[hn]\d+$")


def namespace_name(i: int, pid: int | None = None) -> str:
    return f"{PREFIX}-{pid or os.getpid()}-{i}"


def veth_names(i: int, pid: int | None = None) -> tuple[str, str]:
    """(host end, node end before it moves into its namespace)."""
    me = pid or os.getpid()
    return f"dde{me}h{i}", f"dde{me}n{i}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Swept:
    """What a sweep removed, for the log and the tests."""

    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.links or self.cgroups or self.processes)


def _kill(pids: list[int], swept: Swept) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            swept.processes.append(pid)


def sweep() -> Swept:
    """Remove the namespaces, veths and cgroups of emulations whose process is gone, and kill
    what still runs inside them. Others' live emulations are left alone."""
    swept = Swept()
    for ns in netns.namespaces():
        found = _NS.match(ns)
        if found and not alive(int(found.group(1))):
            _kill(netns.namespace_pids(ns), swept)
            netns.delete_namespace(ns)
            swept.namespaces.append(ns)
    for dev in netns.links():
        found = _VETH.match(dev)
        if found and not alive(int(found.group(1))):
            netns.delete_link(dev)
            swept.links.append(dev)
    control = CpuControl.detect()
    if control.root is not None:
        for path in control.root.glob(f"{PREFIX}-*"):
            found = _NS.match(path.name)
            if found and path.is_dir() and not alive(int(found.group(1))):
                _kill(CpuControl.pids(path), swept)
                CpuControl.remove(path)
                swept.cgroups.append(path.name)
    if swept:
        log.warning("removed leftovers of a ddnn emulation that died: %s", swept)
    return swept
