"""Distributed training options: strategy, synchronization, compression, batch and learning-rate
scaling. Kept apart from TrainConfig so a run's `distributed.json` states them explicitly."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ddnn.errors import DdnnError

STRATEGIES = ("allreduce", "ps")
PS_MODES = ("sync", "async")
COMPRESSIONS = ("none", "fp16")
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class DistConfig:
    strategy: str = "allreduce"  # allreduce: DDP over gloo; ps: rank 0 is a parameter server
    ps_mode: str = "sync"  # ps only: sync waits for every worker per step, async applies each push
    compress: str = "none"  # allreduce only: fp16 halves the gradient bytes on the wire
    lr_scaling: str = "none"  # linear: lr x workers, sqrt: lr x sqrt(workers) (global batch grows)
    warmup_epochs: float = 0.0  # lr rises from the base lr to the scaled lr over these epochs
    timeout: float = 120.0  # seconds a collective may wait before the run fails (dead node)
    max_restarts: int = 0  # local launches: torch elastic restarts, each resuming a checkpoint

    def validate(self) -> None:
        for name, value, valid in (
            ("strategy", self.strategy, STRATEGIES),
            ("ps_mode", self.ps_mode, PS_MODES),
            ("compress", self.compress, COMPRESSIONS),
            ("lr_scaling", self.lr_scaling, LR_SCALINGS),
        ):
            if value not in valid:
                raise DdnnError(f"distributed {name} {value!r}; valid: {', '.join(valid)}")
        if self.compress != "none" and self.strategy != "allreduce":
            raise DdnnError("--compress fp16 applies to --strategy allreduce only")
        if self.timeout <= 0:
            raise DdnnError("--timeout must be positive (seconds)")
        if self.warmup_epochs < 0:
            raise DdnnError("--warmup-epochs must be >= 0")
        if self.max_restarts < 0:
            raise DdnnError("--max-restarts must be >= 0")

    def workers(self, world_size: int) -> int:
        """Processes that compute gradients: all of them, or all but the parameter server."""
        return world_size - 1 if self.strategy == "ps" else world_size

    def processes(self, workers: int) -> int:
        """World size for `workers` training workers (ps adds its server as rank 0)."""
        return workers + 1 if self.strategy == "ps" else workers

    def record(self, world_size: int, batch_per_worker: int, base_lr: float) -> dict[str, Any]:
        """What the run folder states about scaling: the global batch and the lr actually used."""
        workers = self.workers(world_size)
        global_batch = (
            batch_per_worker
            if self.ps_mode == "async" and self.strategy == "ps"
            else (batch_per_worker * workers)
        )
        return asdict(self) | {
            "world_size": world_size,
            "workers": workers,
            "batch_per_worker": batch_per_worker,
            "global_batch": global_batch,
            "base_lr": base_lr,
            "lr": self.scaled_lr(base_lr, workers),
        }

    def lr_factor(self, workers: int) -> float:
        """How much the lr is scaled for `workers` workers (sync: the global batch is x workers;
        async ps applies each worker's batch-64 gradient on its own, so nothing is scaled)."""
        if self.strategy == "ps" and self.ps_mode == "async":
            return 1.0
        if self.lr_scaling == "linear":
            return float(workers)
        if self.lr_scaling == "sqrt":
            return math.sqrt(workers)
        return 1.0

    def scaled_lr(self, base_lr: float, workers: int) -> float:
        return base_lr * self.lr_factor(workers)


_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?\s*$", re.I)
_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_RATE_UNITS |= {"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}  # tc: bps = bytes per second


def parse_rate(text: str) -> float:
    """tc-style rate ('100mbit', '12.5mbps' = bytes) -> bits per second."""
    m = _RATE.match(text)
    if not m:
        raise DdnnError(f"rate {text!r}: write it as tc does, e.g. 100mbit, 1gbit, 12mbps (bytes)")
    return float(m.group(1)) * _RATE_UNITS[(m.group(2) or "bit").lower()]


def parse_seconds(text: str) -> float:
    """'1ms', '200us', '0.5s' -> seconds."""
    m = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$", text)
    if not m:
        raise DdnnError(f"delay {text!r}: write it as tc does, e.g. 1ms, 500us")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2) or "s"]
