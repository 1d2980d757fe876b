"""`ddnn bench distributed`: communication per step on the emulated cluster against the bandwidth
bound of each strategy, measured in the same run.

Bounds, for G gradient bytes, N workers and links of R bytes/s each way (full duplex, a switch):
- ring all-reduce: reduce-scatter then all-gather, each 2 x (N-1)/N x G per link: 2(N-1)/N x G/R.
- parameter server, synchronous, dedicated server node: the update of step k waits for all N
  pushes, which share the server's incoming link; the N pulls of step k share its outgoing link
  (N x G/R), and the last worker pulled can push step k+1 only after that (G/R on its link), while
  the other workers' pushes overlap the pulls (full duplex). Per step: (N + 1) x G/R. (2N x G/R
  if every pull finished before any push started.)
- parameter server, asynchronous: pushes and pulls overlap, so a worker's cycle is at least
  max(2 G/R, N x G/R) (its own link both ways; the server's link carrying every worker's share).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from ddnn.distributed.cluster import EmulatedCluster, run_on_cluster
from ddnn.distributed.config import DistConfig
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)


def bound_seconds(strategy: str, ps_mode: str, workers: int, grad_bytes: float, rate_bps: float):
    """Lower bound on communication seconds per step (see the module docstring)."""
    per_link = grad_bytes * 8 / rate_bps  # seconds to move G over one link
    if strategy == "allreduce":
        return 2 * (workers - 1) / workers * per_link
    if ps_mode == "sync":
        return (workers + 1) * per_link
    return max(2.0, float(workers)) * per_link


def bench_distributed(
    nodes: list[int],
    strategies: list[str],
    rate_bps: float,
    cpu: float | None,
    steps: int,
    ps_mode: str = "sync",
    compress: str = "none",
    preset: str = "lenet5",
) -> list[dict[str, Any]]:
    """One emulated cluster per (strategy, N); each row has the bound and the measured times."""
    rows = []
    for strategy in strategies:
        cfg = DistConfig(strategy=strategy, ps_mode=ps_mode, compress=compress)
        cfg.validate()
        for n in nodes:
            rows.append(_one(cfg, n, rate_bps, cpu, steps, preset))
    return rows


def _one(
    cfg: DistConfig, workers: int, rate_bps: float, cpu: float | None, steps: int, preset: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ddnn-bench-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [
            sys.executable, "-m", "ddnn.distributed.benchworker", "--strategy", cfg.strategy,
            "--ps-mode", cfg.ps_mode, "--compress", cfg.compress, "--preset", preset,
            "--steps", str(steps), "--out", str(out),
        ]  # fmt: skip
        procs = cfg.processes(workers)
        with EmulatedCluster(procs, rate_bps, cpu=cpu) as cluster:
            codes = run_on_cluster(cluster, argv, Path(tmp) / "logs")
            if any(codes) or not out.is_file():
                logs = "\n".join(p.read_text()[-2000:] for p in (Path(tmp) / "logs").glob("*.log"))
                raise DdnnError(f"bench ranks failed (exit codes {codes}):\n{logs}")
            notes = list(cluster.notes)
        doc = json.loads(out.read_text())
    wire_bytes = doc["grad_bytes"] / (2 if cfg.compress == "fp16" else 1)
    bound = bound_seconds(cfg.strategy, cfg.ps_mode, workers, wire_bytes, rate_bps)
    ranks = doc["ranks"]

    def mean(key: str) -> float:
        return sum(r[key] for r in ranks) / len(ranks)

    b2b, comm, step = mean("back_to_back"), mean("train_comm"), mean("train_step")
    return {
        "strategy": cfg.strategy if cfg.strategy == "allreduce" else f"ps-{cfg.ps_mode}",
        "compress": cfg.compress,
        "workers": workers,
        "grad_bytes": doc["grad_bytes"],
        "rate_mbit": rate_bps / 1e6,
        "bound_ms": bound * 1e3,
        "back_to_back_ms": b2b * 1e3,
        "ratio_back_to_back": b2b / bound if bound > 0 else None,
        "train_comm_ms": comm * 1e3,
        "ratio_train": comm / bound if bound > 0 else None,
        "train_compute_ms": (step - comm) * 1e3,
        "notes": notes,
    }


COLUMNS = (
    "strategy", "N", "grad KB", "bound ms", "comm ms (alone)", "ratio", "comm ms (in training)",
    "ratio", "compute ms",
)  # fmt: skip


def _ratio(v: float | None) -> str:
    return "n/a (bound 0)" if v is None else f"{v:.2f}x"


def bench_row(r: dict[str, Any]) -> list[str]:
    """One printed row of the bench table (COLUMNS)."""
    name = r["strategy"] + ("+fp16" if r["compress"] == "fp16" else "")
    return [
        name, str(r["workers"]), f"{r['grad_bytes'] / 1e3:.1f}", f"{r['bound_ms']:.1f}",
        f"{r['back_to_back_ms']:.1f}", _ratio(r["ratio_back_to_back"]),
        f"{r['train_comm_ms']:.1f}", _ratio(r["ratio_train"]), f"{r['train_compute_ms']:.1f}",
    ]  # fmt: skip
