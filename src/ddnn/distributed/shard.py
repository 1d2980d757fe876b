"""Per-rank shards of an in-memory Split, as DistributedSampler does: one permutation per epoch
shared by every rank (same seed), padded by wrapping so every rank takes the same number of steps.
Equal step counts are what keeps uneven data from deadlocking a collective."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ddnn.data.datasets import Split


def steps_per_epoch(n: int, workers: int, batch_per_worker: int) -> int:
    """Steps every worker takes in one epoch over n samples."""
    return math.ceil(math.ceil(n / workers) / batch_per_worker)


def shard_order(n: int, workers: int, rank: int, seed: int, epoch: int) -> Tensor:
    """This worker's sample indices for `epoch`: interleaved, so step k over all workers is the
    same global batch a single process would take with batch_per_worker x workers."""
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    total = math.ceil(n / workers) * workers
    if total > n:  # wrap around: every worker gets the same count
        order = torch.cat([order, order[: total - n]])
    return order[rank::workers]


def shard_batches(
    split: Split, workers: int, rank: int, batch: int, seed: int, epoch: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x [b, C, H, W] float in [0, 1], y [b]) for this worker, `steps_per_epoch` of them."""
    idx = shard_order(len(split), workers, rank, seed, epoch)
    for start in range(0, len(idx), batch):
        part = idx[start : start + batch]
        yield split.images[part].float().div_(255.0), split.labels[part]
