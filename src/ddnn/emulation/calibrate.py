"""The reference workload that states a device's speed, measured on this host.

A device profile says how many GFLOPS one of its cores does on single-threaded float32 GEMM;
measuring the same here gives the host's figure, and their ratio is the CPU quota that makes
this host as slow as the device on that workload. Work that is not GEMM-like (Python overhead,
memory-bound layers) scales differently between an x86 server and an ARM board, so emulated
times are an estimate, good to the ratio of such work (docs/emulation.md).

The host's figure is its best speed: the fastest of many timings in thread CPU time (other
jobs on a busy host only ever slow a timing, through shared caches and cores), so it does not
drift with the load the way a median does. `host_calibration` keeps it in a per-host cache file
that `ddnn profile` and `ddnn run --device-profile` share, so a profile and the run that checks
it dilate the device by the same factor.

`python -m ddnn.emulation.calibrate` prints the figure: run it on a real board to write its
profile.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddnn.emulation.cpu import quota_bounds

if TYPE_CHECKING:
    from ddnn.emulation.profiles import DeviceProfile

log = logging.getLogger(__name__)

SIZE = 256  # C[256x256] = A[256x256] @ B[256x256]: the scale of a small CNN's layers
PRODUCTS = 8  # per timing, so one timing is a few ms even on a fast host
REPEATS = 101
WORKLOAD = (
    f"torch.mm float32 {SIZE}x{SIZE} @ {SIZE}x{SIZE}, 1 thread, "
    f"fastest of {REPEATS} timings of {PRODUCTS} products, thread CPU time"
)
MAX_AGE_S = 24 * 3600  # a cached calibration older than this is measured again
CACHE_ENV = "DDNN_CACHE_DIR"  # where the cache lies (default: $XDG_CACHE_HOME/ddnn)


@dataclass(frozen=True)
class Calibration:
    """The host's speed on the reference workload, and when it was measured."""

    host_gflops: float
    workload: str = WORKLOAD
    measured_at: str = ""  # ISO time, UTC
    spread: float = 0.0  # (median - fastest) / fastest timing: how busy the host was
    median_gflops: float = 0.0  # at the median timing, for comparison with the load
    host: str = ""  # platform.node() where it was measured
    source: str = "measured"  # "measured" now, or the cache file it was read from

    def quota_cores(self, profile: DeviceProfile) -> float:
        """The fraction of one host core that runs as fast as one core of `profile`; clamped
        (with a warning) to what a cfs quota can express."""
        wanted = profile.gflops / self.host_gflops
        low, high = quota_bounds()
        clamped = min(max(wanted, low), high)
        if clamped != wanted:
            log.warning(
                "%s wants %.4f cores of this host; cgroups can give %.3f-%.0f: using %.4f",
                profile.name, wanted, low, high, clamped,
            )  # fmt: skip
        return clamped

    def slowdown(self, profile: DeviceProfile) -> float:
        """How many times longer the reference workload takes on `profile` than here."""
        return self.host_gflops / profile.gflops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(repeats: int = REPEATS) -> Calibration:
    """Time the reference workload on one thread (torch's thread count is restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(SIZE, SIZE, generator=gen)
        b = torch.randn(SIZE, SIZE, generator=gen)
        out = torch.empty(SIZE, SIZE)
        for _ in range(3):  # warm caches and the BLAS's thread-local buffers
            torch.mm(a, b, out=out)
        times = []
        for _ in range(repeats):
            start = time.thread_time()  # CPU time: what a cfs quota meters, and what other
            for _ in range(PRODUCTS):  # jobs on a busy host do not inflate (wall time does)
                torch.mm(a, b, out=out)
            times.append(time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    fastest, median = min(times), statistics.median(times)
    flops = 2 * SIZE**3 * PRODUCTS
    found = Calibration(
        host_gflops=flops / fastest / 1e9,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        spread=(median - fastest) / fastest,
        median_gflops=flops / median / 1e9,
        host=platform.node(),
    )
    log.info("calibration: %.1f GFLOPS (median %.1f) on %s", found.host_gflops,
             found.median_gflops, WORKLOAD)  # fmt: skip
    return found


def cache_path() -> Path:
    """The host's cached calibration: $DDNN_CACHE_DIR, else $XDG_CACHE_HOME/ddnn, else
    ~/.cache/ddnn; one file per host name."""
    root = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ddnn"
    )
    return Path(root) / f"calibration-{platform.node() or 'host'}.json"


def host_calibration(*, remeasure: bool = False, max_age_s: float = MAX_AGE_S) -> Calibration:
    """This host's calibration: the cached one while it is fresh (same host and workload, at
    most `max_age_s` old), else measured now and cached. One figure for every profile and run
    on the host is what makes their device times comparable."""
    path = cache_path()
    if not remeasure:
        cached = _cached(path, max_age_s)
        if cached is not None:
            return cached
    found = calibrate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(found.to_dict(), indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:  # a read-only home still runs, just without sharing
        log.warning("could not cache the calibration in %s: %s", path, exc)
    return found


def _cached(path: Path, max_age_s: float) -> Calibration | None:
    try:
        doc = json.loads(path.read_text())
        found = Calibration(**{**doc, "source": str(path)})
        age = datetime.now(UTC) - datetime.fromisoformat(found.measured_at)
    except (OSError, ValueError, TypeError):  # absent, unreadable or of another format
        return None
    if found.host != platform.node() or found.workload != WORKLOAD:
        return None
    if not 0 <= age.total_seconds() <= max_age_s:
        log.info("%s is %.1f h old: calibrating again", path, age.total_seconds() / 3600)
        return None
    log.info("calibration: %.1f GFLOPS from %s (%s)", found.host_gflops, path, found.measured_at)
    return found


if __name__ == "__main__":
    import sys

    json.dump(calibrate().to_dict(), sys.stdout, indent=2)  # always measured: a board's figure
    sys.stdout.write("\n")
