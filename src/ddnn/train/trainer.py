"""Joint training of every exit, with a run folder: the resolved config, per-epoch metrics (JSON
lines), the best model (store format) and a resumable training state."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddnn.config import to_dict
from ddnn.data.datasets import Dataset, Split
from ddnn.data.source import DataSource
from ddnn.errors import DdnnError
from ddnn.evaluate.calibrate import calibrate
from ddnn.evaluate.runner import collect_outputs, evaluate_outputs
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.inputs import fit_to_data
from ddnn.model.views import split_views, with_data_presence
from ddnn.nn.binary import BinaryConv2d, BinaryLinear, clip_latent_weights
from ddnn.store.artifact import SPEC_FILE, open_model, save_model
from ddnn.store.durable import STAGING_PREFIX, SaveError, json_bytes, replace_files
from ddnn.train.config import Experiment, TrainConfig
from ddnn.train.loss import joint_loss, target_maps
from ddnn.train.state import (
    START_OVER,
    STATE_JSON,
    STATE_TENSORS,
    load_train_state,
    save_train_state,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
EPOCHS_FILE = "metrics.jsonl"
REPORT_FILE = "metrics.json"
# everything ddnn writes into a run folder (distributed.json by ddnn.distributed, sweep.png by
# `ddnn evaluate --sweep`): what --overwrite clears and what marks a folder as holding a run
RUN_FILES = (
    CONFIG_FILE, EPOCHS_FILE, REPORT_FILE, SPEC_FILE, "weights", STATE_TENSORS, STATE_JSON,
    "distributed.json", "sweep.png",
)  # fmt: skip
_INFO_KEYS = ("epoch", "best", "version", "parent", "generator")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "step":
        milestones = [total // 2, (3 * total) // 4]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    return None


def random_presence(batch: int, devices: int, p_drop: float, gen: torch.Generator) -> Tensor | None:
    """[B, D] bool with each device dropped with probability p_drop, at least one kept."""
    if devices == 1 or p_drop == 0.0:
        return None
    present = torch.rand(batch, devices, generator=gen) >= p_drop  # [B, D]
    keep = torch.randint(0, devices, (batch,), generator=gen)  # [B] one device always present
    present[torch.arange(batch), keep] = True
    return present


@dataclass
class StepContext:
    """What one training step needs besides the batch; built once per run, not per step."""

    model: HierarchicalModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    maps: dict[str, Tensor]
    device_dropout: float
    generator: torch.Generator
    has_binary: bool


def train_step(
    ctx: StepContext, x: Tensor, y: Tensor, data_present: Tensor | None = None
) -> Tensor:
    """One optimizer step on x [B, C, H, W], y [B]; returns the detached joint loss."""
    spec = ctx.model.spec
    views = split_views(x, spec)  # [B, D, C, h, w]
    present = random_presence(len(x), spec.devices, ctx.device_dropout, ctx.generator)
    present = with_data_presence(present, data_present)
    logits = ctx.model(views, present)
    loss, _ = joint_loss(logits, y, spec, ctx.maps)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    ctx.optimizer.step()
    if ctx.scheduler is not None:
        ctx.scheduler.step()
    if ctx.has_binary:
        clip_latent_weights(ctx.model)
    return loss.detach()


def run_epoch(ctx: StepContext, split: Split, batch_size: int, desc: str | None = None) -> float:
    """One pass over `split`; returns the mean joint loss. A progress bar unless desc is None."""
    ctx.model.train()
    total = torch.zeros(())
    steps = math.ceil(len(split) / batch_size)
    batches = split.batches_present(batch_size, shuffle=True, generator=ctx.generator)
    bar = tqdm(batches, total=steps, desc=desc, leave=False, mininterval=1.0, disable=desc is None)
    for x, y, present in bar:
        total += train_step(ctx, x, y, present)
    return float(total) / max(steps, 1)


def prepare_run_dir(run_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse to train into a folder that holds a run unless told to overwrite, then delete that
    run's files (only ddnn's): else the new model replaced the old one silently while
    metrics.jsonl and distributed.json kept the old run's lines."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not overwrite:
        raise DdnnError(
            f"{run_dir} already holds a run ({', '.join(found)}): pass --overwrite to replace "
            f"it, `ddnn train --resume {run_dir}` to continue it, or choose another --out"
        )
    stale = [run_dir / name for name in found] + sorted(run_dir.glob(STAGING_PREFIX + "*"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def how_to_continue(run_dir: str | Path) -> str:
    """What to run after a run stopped early: resume when a training state was saved."""
    if (Path(run_dir) / STATE_TENSORS).is_file():
        return f"run `ddnn train --resume {run_dir}`"
    return f"nothing to resume in {run_dir} yet: {START_OVER}"


def read_epochs(run_dir: Path, last: int) -> list[dict[str, Any]]:
    """metrics.jsonl's records of epochs 1..last: a run that stopped after writing a line but
    before saving its training state would otherwise repeat that epoch's line on resume."""
    path = run_dir / EPOCHS_FILE
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and epoch <= last:
            records.append(record)
    return records


def _accuracy_by_exit(model: HierarchicalModel, split: Split) -> dict[str, float]:
    out = collect_outputs(model, split)
    correct = out.predictions == out.labels[None, :]
    return {name: float(c.mean()) for name, c in zip(out.names, correct, strict=True)}


class Trainer:
    """Trains one experiment into a run folder."""

    def __init__(
        self,
        experiment: Experiment,
        run_dir: str | Path,
        dataset: Dataset | None = None,
        init_from: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = experiment.train
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.source = DataSource.of(
            self.cfg.dataset, self.cfg.data_dir, self.cfg.image_size, self.cfg.seed
        )
        self.data = dataset or self.source.load(self.cfg.val_fraction)
        torch.manual_seed(self.cfg.seed)
        self.parent: str | None = None
        self.version = 1
        if init_from is not None:  # fine-tuning: the stored architecture, a new version
            stored = open_model(init_from)
            self.model = stored.load()
            self.parent = str(Path(init_from).resolve())
            self.version = stored.version + 1
        else:
            self.model = HierarchicalModel(fit_to_data(experiment.model, self.data))
        self.train_split = self.data.train.head(self.cfg.limit)
        steps = math.ceil(len(self.train_split) / self.cfg.batch_size)
        optimizer = make_optimizer(self.model, self.cfg)
        self.ctx = StepContext(
            model=self.model,
            optimizer=optimizer,
            scheduler=make_scheduler(optimizer, self.cfg, steps),
            maps=target_maps(self.model.spec),
            device_dropout=self.cfg.device_dropout,
            generator=torch.Generator().manual_seed(self.cfg.seed),
            has_binary=any(
                isinstance(m, BinaryConv2d | BinaryLinear) for m in self.model.modules()
            ),
        )
        self.start_epoch = 1
        self.best = -1.0
        self.epochs: list[dict[str, Any]] = []  # metrics.jsonl's records

    def resume(self) -> None:
        """Continue an interrupted run from its last finished epoch (0: none finished)."""
        info = load_train_state(self.run_dir, self.model, self.ctx.optimizer, self.ctx.scheduler)
        missing = [k for k in _INFO_KEYS if k not in info]
        if missing or not isinstance(info["epoch"], int):
            raise DdnnError(
                f"{self.run_dir / STATE_JSON} lacks {', '.join(missing) or 'a whole epoch'}: "
                f"{START_OVER}"
            )
        try:
            self.ctx.generator.set_state(torch.tensor(info["generator"], dtype=torch.uint8))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise DdnnError(
                f"{self.run_dir / STATE_JSON}: the generator state is damaged: {START_OVER}"
            ) from exc
        self.start_epoch, self.best = info["epoch"] + 1, info["best"]
        self.version, self.parent = info["version"], info["parent"]
        self.epochs = read_epochs(self.run_dir, info["epoch"])
        log.info("resuming %s after epoch %d", self.run_dir, info["epoch"])

    def train_epoch(self, epoch: int) -> float:
        """One epoch's mean loss: a method so distributed training can shard and synchronize."""
        desc = f"epoch {epoch}/{self.cfg.epochs}" if self.progress else None
        return run_epoch(self.ctx, self.train_split, self.cfg.batch_size, desc)

    def fit(self) -> dict[str, Any]:
        """Train, keep the best epoch by validation accuracy of the final exit, calibrate the
        thresholds on validation and report on test. Returns the test report. A failed save
        ends in one line saying how to continue; the folder keeps its last complete save."""
        try:
            return self._fit()
        except SaveError as exc:
            action = "free space" if exc.disk_full else "fix that"
            raise DdnnError(f"{exc}: {action} and {how_to_continue(self.run_dir)}") from exc

    def _fit(self) -> dict[str, Any]:
        config = {"train": to_dict(self.cfg), "model": to_dict(self.model.spec)}
        replace_files(self.run_dir, {CONFIG_FILE: json_bytes(config)})
        if self.start_epoch == 1:
            self._save_state(0)  # resumable from the first epoch on (a Ctrl-C in epoch 1)
        before = self._baseline_report()
        final_exit = self.model.spec.exit_sections[-1].name
        for epoch in range(self.start_epoch, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            loss = self.train_epoch(epoch)
            seconds = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise DdnnError(
                    f"epoch {epoch}: the loss is {loss}, training diverged: {START_OVER}, with a "
                    "lower learning rate (--lr)"
                )
            val = _accuracy_by_exit(self.model, self.data.val)
            record = {"epoch": epoch, "loss": loss, "val_accuracy": val, "seconds": seconds}
            self.epochs.append(record)
            text = "".join(json.dumps(r) + "\n" for r in self.epochs)
            replace_files(self.run_dir, {EPOCHS_FILE: text.encode()})
            log.info(
                "epoch %d/%d: loss %.4f, validation accuracy %s (%.1f s)", epoch,
                self.cfg.epochs, loss, ", ".join(f"{k} {v:.3f}" for k, v in val.items()), seconds,
            )  # fmt: skip
            if val[final_exit] > self.best:
                self.best = val[final_exit]
                save_model(self.model, self.run_dir, self.version, self.parent, data=self.source)
            self._save_state(epoch)  # last: the commit point of the epoch
        return self.finish(before)

    def _save_state(self, epoch: int) -> None:
        info = {
            "epoch": epoch, "best": self.best, "version": self.version, "parent": self.parent,
            "generator": self.ctx.generator.get_state().tolist(),
        }  # fmt: skip
        save_train_state(self.run_dir, self.model, self.ctx.optimizer, self.ctx.scheduler, info)

    def _baseline_report(self) -> dict[str, Any] | None:
        """When fine-tuning: the parent's test report on this data, to compare after."""
        if self.parent is None:
            return None
        return evaluate_outputs(self.model, collect_outputs(self.model, self.data.test))

    def finish(self, before: dict[str, Any] | None = None) -> dict[str, Any]:
        """Calibrate on validation, store thresholds and metrics with the best model."""
        best = open_model(self.run_dir).load()
        val_out = collect_outputs(best, self.data.val)
        thresholds = calibrate(
            val_out, self.cfg.calibrate, self.cfg.tolerance, self.cfg.target_fraction
        )
        names = [s.name for s in best.spec.exit_sections[:-1]]
        best.spec = best.spec.with_thresholds(dict(zip(names, thresholds, strict=True)))
        test = evaluate_outputs(best, collect_outputs(best, self.data.test))
        metrics: dict[str, Any] = {
            "dataset": self.data.name,
            "calibration": {"mode": self.cfg.calibrate, "split": "validation"},
            "validation": evaluate_outputs(best, val_out),
            "test": test,
        }
        if before is not None:
            metrics["before_fine_tuning"] = before
        save_model(best, self.run_dir, self.version, self.parent, metrics, data=self.source)
        replace_files(self.run_dir, {REPORT_FILE: json_bytes(metrics)})
        return test


def train_experiment(
    experiment: Experiment,
    run_dir: str | Path,
    init_from: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The `ddnn train` entry point; returns the test report. A new run refuses a folder that
    holds one unless `overwrite` (see prepare_run_dir)."""
    if init_from is not None:
        if Path(init_from).resolve() == Path(run_dir).resolve():
            raise DdnnError(f"--from {init_from} is the --out folder: fine-tune into another one")
        experiment = replace(experiment, model=open_model(init_from).spec)
    if not resume:
        prepare_run_dir(run_dir, overwrite)
    trainer = Trainer(experiment, run_dir, init_from=init_from, progress=progress)
    if resume:
        trainer.resume()
    return trainer.fit()
