"""One rank of a data-parallel run. Every rank builds the same Trainer (same seed, same data files)
and trains its shard; rank 0 alone writes the run folder. The trainer's own pieces do the work:
`train_step` on each worker (DDP-wrapped model, or a parameter-server client as its optimizer),
`make_optimizer` / `make_scheduler` where the parameters live, `Trainer.fit` on rank 0."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ddnn.data.datasets import Dataset
from ddnn.distributed.config import DistConfig
from ddnn.distributed.hooks import CommTimer, comm_hook
from ddnn.distributed.ps import ParameterServer, PSClient, pack_state, unpack_state
from ddnn.distributed.shard import shard_batches, steps_per_epoch
from ddnn.distributed.warmup import with_warmup
from ddnn.errors import DdnnError
from ddnn.model.spec import ModelSpec
from ddnn.train.config import Experiment
from ddnn.train.state import STATE_TENSORS
from ddnn.train.trainer import Trainer, make_scheduler, train_step

log = logging.getLogger(__name__)

RECORD_FILE = "distributed.json"
# "rank:step:exit|hang", for tests and failure demos; it fires on the first attempt only, so an
# elastic restart (--max-restarts) shows the run recovering
FAULT_ENV = "DDNN_DIST_FAULT"


class _DDP(DistributedDataParallel):
    """DDP that still answers `.spec`, which train_step reads from its model."""

    @property
    def spec(self) -> ModelSpec:
        return self.module.spec  # type: ignore[return-value]


class DistributedTrainer(Trainer):
    """A Trainer whose epochs run on this rank's shard and synchronize with the other ranks."""

    def __init__(
        self,
        experiment: Experiment,
        run_dir: str | Path,
        dist_cfg: DistConfig,
        dataset: Dataset | None = None,
        init_from: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.dist_cfg = dist_cfg
        self.workers = dist_cfg.workers(self.world)
        super().__init__(experiment, run_dir, dataset, init_from, progress and self.rank == 0)
        self.is_server = dist_cfg.strategy == "ps" and self.rank == 0
        self.worker_rank = self.rank - 1 if dist_cfg.strategy == "ps" else self.rank
        self.steps = steps_per_epoch(len(self.train_split), self.workers, self.cfg.batch_size)
        self.timer: CommTimer | None = None
        self.server: ParameterServer | None = None
        self.timings: list[dict[str, Any]] = []
        if dist_cfg.strategy == "allreduce":
            self.timer = CommTimer()
            ddp = _DDP(self.model)
            ddp.register_comm_hook(self.timer, comm_hook(dist_cfg.compress))
            self.ctx.model = ddp  # type: ignore[assignment]
            self.ctx.scheduler = self._scheduler(self.steps)
        elif self.is_server:
            self.server = ParameterServer(self.ctx, self.workers, dist_cfg.ps_mode)
            self.ctx.scheduler = self._scheduler(self.steps * self.server.updates_per_step())
        else:
            self.ctx.optimizer = PSClient(self.model)  # type: ignore[assignment]
            self.ctx.scheduler = None  # the server owns the learning rate

    def _scheduler(self, updates_per_epoch: int) -> Any:
        """The trainer's schedule over this run's updates, behind the lr warm-up if one is set."""
        inner = make_scheduler(self.ctx.optimizer, self.cfg, updates_per_epoch)
        warmup = round(self.dist_cfg.warmup_epochs * updates_per_epoch)
        return with_warmup(
            self.ctx.optimizer, inner, warmup, 1.0 / self.dist_cfg.lr_factor(self.workers)
        )

    def share_start(self) -> None:
        """Every rank continues from rank 0's epoch (and optimizer, for all-reduce), so a resumed
        or elastically restarted run needs the checkpoint on rank 0's host only."""
        opt = self.dist_cfg.strategy == "allreduce" and self.start_epoch > 1
        payload: list[Any] = [
            self.start_epoch,
            self.best,
            self.ctx.optimizer.state_dict() if opt else None,
            self.ctx.scheduler.state_dict() if opt and self.ctx.scheduler else None,
        ]
        dist.broadcast_object_list(payload, src=0)
        state = pack_state(self.model)  # DDP broadcast at wrap time, before rank 0 resumed
        dist.broadcast(state, src=0)
        unpack_state(self.model, state)
        self.start_epoch, self.best = payload[0], payload[1]
        if self.rank != 0 and payload[2] is not None:
            self.ctx.optimizer.load_state_dict(payload[2])
            if self.ctx.scheduler is not None and payload[3] is not None:
                self.ctx.scheduler.load_state_dict(payload[3])

    def train_epoch(self, epoch: int) -> float:
        try:
            return self._train_epoch(epoch)
        except (RuntimeError, dist.DistError) as exc:
            if isinstance(exc, DdnnError):
                raise
            text = re.sub(r"\[[^\]]*\]\s*", "", str(exc)).strip()  # drop gloo's source paths
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise DdnnError(
                f"rank {self.rank}/{self.world}: lost contact with the other ranks in epoch "
                f"{epoch} ({reason}). A node died, was stopped or stalled longer than the "
                f"{self.dist_cfg.timeout:.0f} s timeout. Restart with --resume {self.run_dir} to "
                "continue from the last finished epoch (if one finished), or raise --timeout for "
                "slow nodes."
            ) from exc

    def _train_epoch(self, epoch: int) -> float:
        t0 = time.perf_counter()
        if self.dist_cfg.strategy == "ps":  # everyone starts the epoch from the server's state
            state = pack_state(self.model)
            dist.broadcast(state, src=0)
            unpack_state(self.model, state)
        loss, compute, comm = torch.zeros(()), 0.0, 0.0
        if self.server is not None:
            self.server.serve(self.steps)
        else:
            loss, compute, comm = self._worker_epoch(epoch)
        wall = time.perf_counter() - t0
        mine = torch.tensor([float(loss), float(self.server is None) * self.steps, compute, comm])
        every = [torch.zeros(4) for _ in range(self.world)]
        dist.all_gather(every, mine)
        table = torch.stack(every)  # [world, (loss sum, steps, compute s, comm s)]
        workers = table[table[:, 1] > 0]
        if self.rank == 0:
            self._record(epoch, wall, workers)
        return float(workers[:, 0].sum() / workers[:, 1].sum())

    def _worker_epoch(self, epoch: int) -> tuple[torch.Tensor, float, float]:
        """(loss sum, compute seconds, communication seconds) over this worker's shard."""
        self.ctx.model.train()
        batches = shard_batches(
            self.train_split, self.workers, self.worker_rank, self.cfg.batch_size,
            self.cfg.seed, epoch,
        )  # fmt: skip
        bar = tqdm(
            batches, total=self.steps, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False,
            mininterval=1.0, disable=not self.progress,
        )  # fmt: skip
        fault = _fault(self.rank)
        total, busy = torch.zeros(()), 0.0
        comm_before = self._comm_seconds()
        for step, (x, y) in enumerate(bar):
            if fault is not None and fault[0] == (epoch - 1) * self.steps + step:
                _inject(fault[1])
            t = time.perf_counter()
            total += train_step(self.ctx, x, y)
            busy += time.perf_counter() - t
        comm = self._comm_seconds() - comm_before
        return total, busy - comm, comm

    def _comm_seconds(self) -> float:
        if self.timer is not None:
            return self.timer.seconds
        return self.ctx.optimizer.comm_seconds  # type: ignore[attr-defined]

    def _record(self, epoch: int, wall: float, workers: torch.Tensor) -> None:
        steps = float(workers[:, 1].max())
        self.timings.append({
            "epoch": epoch,
            "seconds": wall,
            "steps_per_worker": int(steps),
            "compute_per_step": float(workers[:, 2].mean()) / steps,
            "comm_per_step": float(workers[:, 3].mean()) / steps,
            "comm_per_step_max": float(workers[:, 3].max()) / steps,
        })  # fmt: skip
        write_record(self.run_dir, self.dist_cfg, self.world, self.cfg, self.timings)


def write_record(
    run_dir: Path, dist_cfg: DistConfig, world: int, cfg: Any, timings: list[dict[str, Any]]
) -> None:
    """distributed.json: the scaling (global batch, lr rule and value) and per-epoch timings."""
    base_lr = cfg.lr / dist_cfg.lr_factor(dist_cfg.workers(world))
    doc = dist_cfg.record(world, cfg.batch_size, base_lr) | {"epochs": timings}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECORD_FILE).write_text(json.dumps(doc, indent=2))


def restarted() -> bool:
    """This rank was started again by torch elastic after a failure (--max-restarts)."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"


def _fault(rank: int) -> tuple[int, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec or restarted():
        return None
    r, step, kind = spec.split(":")
    return (int(step), kind) if int(r) == rank else None


def _inject(kind: str) -> None:
    log.warning("%s: injected fault %r", FAULT_ENV, kind)
    if kind == "hang":
        time.sleep(10**6)
    os._exit(3)


def run_rank(
    experiment: Experiment,
    run_dir: str | Path,
    dist_cfg: DistConfig,
    init_from: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> dict[str, Any] | None:
    """Train as one rank; the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) comes from
    torchrun, the local launcher or `ddnn cluster`. Returns the test report on rank 0."""
    dist_cfg.validate()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if rank != 0:  # only rank 0 logs progress; warnings and errors still show
        logging.getLogger("ddnn").setLevel(logging.WARNING)
    if dist_cfg.strategy == "ps" and world < 2:
        raise DdnnError("--strategy ps needs a server and at least one worker (2 processes)")
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    workers = dist_cfg.workers(world)
    lr = dist_cfg.scaled_lr(experiment.train.lr, workers)
    experiment = replace(experiment, train=replace(experiment.train, lr=lr))
    run_dir = Path(run_dir)
    if not resume and restarted():
        resume = (run_dir / STATE_TENSORS).is_file()  # elastic restart: continue, not restart
    dist.init_process_group("gloo", timeout=timedelta(seconds=dist_cfg.timeout))
    try:
        trainer = DistributedTrainer(experiment, run_dir, dist_cfg, dataset, init_from, progress)
        if resume and rank == 0:
            trainer.resume()
        trainer.share_start()
        if rank == 0:
            log.info(
                "%s: %d workers x batch %d = global batch %d, lr %g (%s scaling, %g warm-up "
                "epochs)", dist_cfg.strategy, workers, experiment.train.batch_size,
                dist_cfg.record(world, experiment.train.batch_size, lr)["global_batch"], lr,
                dist_cfg.lr_scaling, dist_cfg.warmup_epochs,
            )  # fmt: skip
            write_record(run_dir, dist_cfg, world, experiment.train, trainer.timings)
            return trainer.fit()
        for epoch in range(trainer.start_epoch, trainer.cfg.epochs + 1):
            trainer.train_epoch(epoch)
        return None
    finally:
        dist.destroy_process_group()
