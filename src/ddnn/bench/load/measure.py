"""Measuring the processes under load: CPU time and resident memory from /proc (Linux only) and
the servers' counters from their Prometheus endpoints."""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from ddnn.errors import DdnnError
from ddnn.runtime.metric_names import (
    DUPLICATES_DROPPED,
    ERRORS,
    REPLIES,
    REQUESTS_RECEIVED,
    exposed,
)
from ddnn.runtime.metrics import parse_samples

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise DdnnError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def machine_cpu() -> float:
    """CPU seconds all cores spent busy so far (/proc/stat, idle and iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _CLK_TCK  # up to steal; guests are in user


def child_pid(command: str) -> int | None:
    """Pid of this process's child running `command` (the private Mosquitto), if any."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
        if comm == command and rest.split()[1] == me:
            return int(entry.name)
    return None


def server_counters(ports: Sequence[int]) -> dict[str, float]:
    """The serve processes' metrics from their Prometheus endpoints, summed over labels and
    processes (per-code error counts also as `errors_<code>`)."""
    out: dict[str, float] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            samples = parse_samples(resp.read().decode())
        for key, value in samples.items():
            name = key.split("{", 1)[0]
            if "{" in key and name == exposed(ERRORS):
                code = key.split('code="', 1)[1].split('"', 1)[0]
                out[f"errors_{code}"] = out.get(f"errors_{code}", 0.0) + value
            out[name] = out.get(name, 0.0) + value
    return out


def _processed(c: dict[str, float]) -> float:
    return (
        c.get(exposed(REPLIES), 0.0)
        + c.get(exposed(ERRORS), 0.0)
        + c.get(exposed(DUPLICATES_DROPPED), 0.0)
    )


def drain(ports: Sequence[int], timeout: float) -> dict[str, float]:
    """Wait until the server answered everything it received and nothing more arrives (a
    backlog can sit in the broker or the socket, not only in the server's queue), so the next
    step starts from an idle server."""
    end = time.monotonic() + timeout
    last = server_counters(ports)
    while True:
        time.sleep(0.3)
        c = server_counters(ports)
        received = c.get(exposed(REQUESTS_RECEIVED), 0.0)
        settled = received == last.get(exposed(REQUESTS_RECEIVED), 0.0)
        if settled and _processed(c) >= received:
            return c
        if time.monotonic() > end:
            log.warning("server still has a backlog after %.0f s", timeout)
            return c
        last = c
