"""CPU quotas through cgroups: where they go on this host (v2 cpu.max, v1 cfs quota, or
nowhere), one cgroup per emulated node, entered by a child before it execs.

The cfs period is short (10 ms) rather than the kernel's 100 ms default: a quota of 3 % with a
100 ms period lets a process run 3 ms and then stalls it 97 ms, so a 5 ms inference takes
either 5 ms or 100 ms depending on where in the period it starts. With 10 ms periods the stall
is at most ~10 ms and the average speed is the same. The kernel wants a quota of at least
1 ms, so below 10 % of a core the period grows instead (quota 1 ms, period 1 ms / cores).

The trap: a quota limits average use, not speed. A job shorter than the quota (1 ms of host CPU,
which is ~55 ms on a Pi 3) finds the budget full and runs at host speed. So the inference of an
emulated device is also *dilated*: `dilated()` sleeps (slowdown - 1) x the CPU time the block
used, which makes every call take the profile's time, and costs the budget exactly what the
sleep refills. The quota still bounds everything else (Python, MQTT) on average.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHORT_PERIOD_US = 10_000
SLOWDOWN_ENV = "DDNN_EMULATED_SLOWDOWN"  # host speed / device speed, set for device processes
MIN_QUOTA_US = 1_000  # the kernel refuses less
MAX_PERIOD_US = 1_000_000  # the kernel refuses more


def quota_bounds() -> tuple[float, float]:
    """The fractions of a core a cfs quota can express here: 1 ms per 1 s up to every core."""
    return MIN_QUOTA_US / MAX_PERIOD_US, float(os.cpu_count() or 1)


def cfs_period_us(cores: float) -> int:
    """10 ms, or longer when 10 ms x cores would be under the kernel's 1 ms minimum quota."""
    if cores * SHORT_PERIOD_US >= MIN_QUOTA_US:
        return SHORT_PERIOD_US
    return min(MAX_PERIOD_US, math.ceil(MIN_QUOTA_US / cores))


@dataclass
class CpuControl:
    """Where CPU quotas go on this host: cgroup v2 cpu.max, v1 cfs quota, or nowhere."""

    kind: str  # "v2", "v1" or "none"
    root: Path | None = None
    why: str = ""

    @staticmethod
    def detect() -> CpuControl:
        for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
            controllers = root / "cgroup.controllers"
            if controllers.is_file() and "cpu" in controllers.read_text().split():
                try:
                    (root / "cgroup.subtree_control").write_text("+cpu")
                    return CpuControl("v2", root)
                except OSError as exc:
                    why = f"cgroup v2 at {root} has cpu but +cpu is refused ({exc})"
                    return CpuControl("none", None, why)
        for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct")):
            if (root / "cpu.cfs_quota_us").is_file() and os.access(root, os.W_OK):
                return CpuControl("v1", root)
        return CpuControl("none", None, "no writable cgroup with a cpu controller")

    def create(self, name: str, cores: float | None) -> Path | None:
        """A cgroup `name` limited to `cores` (None: unlimited, limit it later)."""
        if self.root is None:
            return None
        path = self.root / name
        path.mkdir(exist_ok=True)
        self.set_cores(path, cores)
        return path

    def set_cores(self, path: Path, cores: float | None) -> None:
        """Change a cgroup's quota live; None lifts it."""
        if cores is None:
            if self.kind == "v2":
                (path / "cpu.max").write_text("max")
            else:
                (path / "cpu.cfs_quota_us").write_text("-1")
            return
        period = cfs_period_us(cores)
        quota = max(MIN_QUOTA_US, round(cores * period))
        if self.kind == "v2":
            (path / "cpu.max").write_text(f"{quota} {period}")
        else:  # v1 checks quota against the period: lift the quota before a shorter period
            (path / "cpu.cfs_quota_us").write_text("-1")
            (path / "cpu.cfs_period_us").write_text(str(period))
            (path / "cpu.cfs_quota_us").write_text(str(quota))

    @staticmethod
    def pids(path: Path) -> list[int]:
        try:
            return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    @classmethod
    def remove(cls, path: Path, kill: bool = True) -> bool:
        """rmdir the cgroup (possible once its last process is reaped); `kill`: SIGKILL what
        is still inside first. False (and a warning) if it stays."""
        for attempt in range(50):
            if kill and attempt % 10 == 0:
                for pid in cls.pids(path):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                time.sleep(0.1)
        log.warning("could not remove cgroup %s", path)
        return False


def enter_cgroup(path: Path) -> Callable[[], None]:
    """A preexec_fn: the child joins the cgroup before exec, so no instruction escapes it."""
    procs = str(path / "cgroup.procs")

    def enter() -> None:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    return enter


@contextmanager
def cpu_limited(cores: float, name: str) -> Iterator[Callable[[], None] | None]:
    """`with cpu_limited(0.05, "ddnn-x") as pre: Popen(argv, preexec_fn=pre)`: the child runs
    in a cgroup limited to `cores`; removed on exit (what is still inside is killed). Yields
    None, after a one-line warning, when this host has no usable cpu controller."""
    control = CpuControl.detect()
    path = control.create(name, cores) if control.kind != "none" else None
    if path is None:
        log.warning("CPU quota NOT applied: %s", control.why or "no cpu controller")
        yield None
        return
    try:
        yield enter_cgroup(path)
    finally:
        CpuControl.remove(path)


def slowdown_from_env() -> float | None:
    """The slowdown an emulation asked this process for (SLOWDOWN_ENV), if any."""
    text = os.environ.get(SLOWDOWN_ENV)
    try:
        value = float(text) if text else None
    except ValueError:
        log.warning("ignoring %s=%r: not a number", SLOWDOWN_ENV, text)
        return None
    return value if value is not None and value > 1 else None


@contextmanager
def dilated(slowdown: float | None) -> Iterator[None]:
    """Run the block, then sleep (slowdown - 1) x the process CPU time it used, so it takes
    `slowdown` times as long as on this host (None or <= 1: no effect). Process time, not thread
    time, so engines computing on their own threads count too."""
    if slowdown is None or slowdown <= 1:
        yield
        return
    start = time.process_time()
    yield
    time.sleep((time.process_time() - start) * (slowdown - 1))
