"""The reference workload that states a device's speed, measured on this host.

A device profile says how many GFLOPS one of its cores does on single-threaded float32 GEMM;
measuring the same here gives the host's figure, and their ratio is the CPU quota that makes
this host as slow as the device on that workload. Work that is not GEMM-like (Python overhead,
memory-bound layers) scales differently between an x86 server and an ARM board, so emulated
times are an estimate, good to the ratio of such work (docs/emulation.md).

`python -m ddnn.emulation.calibrate` prints the figure: run it on a real board to write its
profile.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ddnn.emulation.cpu import quota_bounds

if TYPE_CHECKING:
    from ddnn.emulation.profiles import DeviceProfile

log = logging.getLogger(__name__)

SIZE = 256  # C[256x256] = A[256x256] @ B[256x256]: the scale of a small CNN's layers
PRODUCTS = 8  # per timing, so one timing is a few ms even on a fast host
REPEATS = 21
WORKLOAD = (
    f"torch.mm float32 {SIZE}x{SIZE} @ {SIZE}x{SIZE}, 1 thread, "
    f"median of {REPEATS} timings of {PRODUCTS} products, thread CPU time"
)


@dataclass(frozen=True)
class Calibration:
    """The host's speed on the reference workload, and when it was measured."""

    host_gflops: float
    workload: str = WORKLOAD
    measured_at: str = ""  # ISO time, UTC
    spread: float = 0.0  # (p90 - p10) / median of the timings: how steady the host was

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
    median = statistics.median(times)
    deciles = statistics.quantiles(times, n=10)
    flops = 2 * SIZE**3 * PRODUCTS
    found = Calibration(
        host_gflops=flops / median / 1e9,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        spread=(deciles[-1] - deciles[0]) / median,
    )
    log.info("calibration: %.1f GFLOPS on %s (spread %.0f %%)", found.host_gflops, WORKLOAD,
             found.spread * 100)  # fmt: skip
    return found


if __name__ == "__main__":
    import json
    import sys

    json.dump(calibrate().to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
