"""Real multi-process training on loopback with gloo (spawned through torch elastic)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch

from ddnn.distributed.config import DistConfig
from ddnn.distributed.launch import launch_local
from ddnn.distributed.shard import shard_batches
from ddnn.distributed.trainer import FAULT_ENV
from ddnn.errors import DdnnError
from ddnn.store.artifact import load_model, read_spec_doc
from ddnn.train.config import load_experiment
from ddnn.train.trainer import Trainer, train_experiment, train_step

# 2 ranks x 16 = one process x 32 on the same samples per step; the only difference is the order
# of float32 sums (mean of two means vs one mean), about 1e-7 per step: 4 steps stay within 1e-5.
ATOL, RTOL = 1e-5, 1e-4


def _experiment(batch: int, epochs: int = 1, limit: int = 128):
    return load_experiment("lenet5", dataset="synthetic", epochs=epochs, batch_size=batch,
                           limit=limit)  # fmt: skip


def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    launch_local(_experiment(16), tmp_path / "run", DistConfig(timeout=30), 2, progress=False)
    distributed = load_model(tmp_path / "run").state_dict()
    one = Trainer(_experiment(32), tmp_path / "single", progress=False)
    for x, y in shard_batches(one.train_split, 1, 0, 32, one.cfg.seed, epoch=1):
        train_step(one.ctx, x, y)
    reference = one.model.state_dict()
    assert distributed.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(distributed[name], value, atol=ATOL, rtol=RTOL, msg=name)
    record = json.loads((tmp_path / "run" / "distributed.json").read_text())
    assert record["global_batch"] == 32 and record["workers"] == 2


def test_parameter_server_fine_tunes_with_a_warmed_up_scaled_lr(tmp_path):
    parent, run = tmp_path / "parent", tmp_path / "v2"
    train_experiment(_experiment(32, limit=64), parent, progress=False)  # a stored model, v1
    exp = _experiment(32, epochs=3, limit=None)
    exp = replace(exp, train=replace(exp.train, lr=0.05))  # x 2 workers (linear) = 0.1
    cfg = DistConfig(strategy="ps", lr_scaling="linear", warmup_epochs=1.0, timeout=30)
    report = launch_local(exp, run, cfg, 2, init_from=parent, progress=False)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert report["accuracy"]["overall"] > 0.25  # 4 synthetic classes: above chance
    record = json.loads((run / "distributed.json").read_text())
    assert record["strategy"] == "ps" and record["world_size"] == 3
    assert all(e["comm_per_step"] > 0 for e in record["epochs"])
    assert record["lr"] == pytest.approx(0.1) and record["base_lr"] == pytest.approx(0.05)
    assert record["warmup_epochs"] == 1.0
    metrics = json.loads((run / "metrics.json").read_text())  # fine-tuning: before and after
    assert metrics["before_fine_tuning"]["samples"] == metrics["test"]["samples"]
    spec = read_spec_doc(run)
    assert spec["version"] == 2 and spec["parent"] == str(parent.resolve())


def test_a_stalled_rank_ends_the_run_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:2:hang")  # rank 1 freezes at its third step
    t0 = time.monotonic()
    with pytest.raises(DdnnError, match="lost contact with the other ranks") as info:
        launch_local(_experiment(16), tmp_path, DistConfig(timeout=5), 2, progress=False)
    assert time.monotonic() - t0 < 45
    assert "--resume" in str(info.value)


def test_an_elastic_restart_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    exp = _experiment(16, epochs=3)
    steps = len(list(shard_batches(Trainer(exp, tmp_path / "probe", progress=False).train_split,
                                   2, 1, 16, exp.train.seed, epoch=1)))  # fmt: skip
    monkeypatch.setenv(FAULT_ENV, f"1:{steps}:exit")  # rank 1 dies at the first step of epoch 2
    report = launch_local(exp, tmp_path / "run", DistConfig(timeout=30, max_restarts=1), 2,
                          progress=False)  # fmt: skip
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]  # epoch 1 was not trained again: the restart resumed after it
    assert report["samples"] > 0
