"""One rank of `ddnn bench distributed`, run on every emulated node (`python -m` this module).
Measures communication per step twice: back-to-back (the gradient exchange alone, what the
bandwidth bound describes) and inside real LeNet-5 training steps (what a run sees)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ddnn.distributed.config import DistConfig
from ddnn.distributed.hooks import CommTimer, comm_hook
from ddnn.distributed.ps import ParameterServer, PSClient, gradient_numel
from ddnn.distributed.trainer import _DDP
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.train.config import load_experiment
from ddnn.train.loss import target_maps
from ddnn.train.trainer import StepContext, make_optimizer, train_step


def _model(preset: str) -> tuple[HierarchicalModel, StepContext]:
    exp = load_experiment(preset)
    spec = exp.model.with_dataset(10, (1, 28, 28), tuple(map(str, range(10))), 0.3, 0.35)
    torch.manual_seed(0)
    model = HierarchicalModel(spec)
    ctx = StepContext(
        model=model, optimizer=make_optimizer(model, exp.train), scheduler=None,
        maps=target_maps(spec), device_dropout=0.0, generator=torch.Generator().manual_seed(0),
        has_binary=False,
    )  # fmt: skip
    return model, ctx


def bench_rank(cfg: DistConfig, preset: str, steps: int, warmup: int, batch: int) -> dict:
    """Per-step seconds on this rank: back-to-back comm, training comm, training compute."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model, ctx = _model(preset)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if cfg.strategy == "ps":
        if rank == 0:
            server = ParameterServer(ctx, world - 1, cfg.ps_mode)
            for _ in ("back-to-back", "training"):  # the same calls and barriers as _timed
                server.serve(warmup)
                dist.barrier()
                server.serve(steps)
            return {}
        client = PSClient(model)
        ctx.optimizer = client  # type: ignore[assignment]
        b2b = _timed(client.step, warmup, steps, lambda: client.comm_seconds)
        train = _timed(lambda: train_step(ctx, x, y), warmup, steps, lambda: client.comm_seconds)
    else:
        flat = torch.zeros(gradient_numel(model))
        b2b = _timed(lambda: dist.all_reduce(flat), warmup, steps, None)
        timer = CommTimer()
        ddp = _DDP(model)
        ddp.register_comm_hook(timer, comm_hook(cfg.compress))
        ctx.model = ddp  # type: ignore[assignment]
        train = _timed(lambda: train_step(ctx, x, y), warmup, steps, lambda: timer.seconds)
    return {"back_to_back": b2b[0], "train_comm": train[1], "train_step": train[0]}


def _timed(fn, warmup: int, steps: int, comm) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds per call, communication seconds per call) after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    dist.barrier()
    c0 = comm() if comm else 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    wall = (time.perf_counter() - t0) / steps
    return wall, ((comm() - c0) / steps if comm else wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--strategy", default="allreduce")
    p.add_argument("--ps-mode", default="sync")
    p.add_argument("--compress", default="none")
    p.add_argument("--preset", default="lenet5")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = DistConfig(strategy=a.strategy, ps_mode=a.ps_mode, compress=a.compress, timeout=120)
    dist.init_process_group("gloo", timeout=timedelta(seconds=cfg.timeout))
    try:
        mine = bench_rank(cfg, a.preset, a.steps, a.warmup, a.batch)
        every: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        if dist.get_rank() == 0:
            model, _ = _model(a.preset)
            doc = {"grad_bytes": 4 * gradient_numel(model), "ranks": [e for e in every if e]}
            Path(a.out).write_text(json.dumps(doc))
        dist.barrier()  # nobody tears down gloo while a peer still talks to it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
