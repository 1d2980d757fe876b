"""DDP communication hooks that time the all-reduce, so each step splits into compute and
communication. The timer wraps torch's own hooks (plain all-reduce or fp16 compression)."""

# no `from __future__ import annotations`: DDP checks the hook annotations at runtime

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

Hook = Callable[[Any, dist.GradBucket], torch.futures.Future[torch.Tensor]]


class CommTimer:
    """Seconds spent from a bucket's all-reduce launch to its result (hook state)."""

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        self.process_group = process_group
        self.seconds = 0.0
        self.calls = 0

    def take(self) -> float:
        """The accumulated seconds, reset to zero (read once per step or per epoch)."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def timed(inner: Hook) -> Hook:
    """Wrap a torch comm hook so its wall time lands in the CommTimer state. With one bucket (a
    small model such as LeNet-5) nothing overlaps the backward pass, so this is the exposed
    communication time; with several buckets it is an upper bound."""

    def hook(state: CommTimer, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        t0 = time.perf_counter()
        fut = inner(state.process_group, bucket)

        def done(f: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            state.seconds += time.perf_counter() - t0
            state.calls += 1
            return f.value()

        return fut.then(done)

    return hook


def comm_hook(compress: str) -> Hook:
    """The timed hook for a DistConfig.compress value."""
    inner = default_hooks.fp16_compress_hook if compress == "fp16" else default_hooks.allreduce_hook
    return timed(inner)
