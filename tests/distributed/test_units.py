"""Fast checks without process groups: sharding, rates, bounds, config."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ddnn.distributed.bench import bound_seconds
from ddnn.distributed.config import DistConfig, parse_rate
from ddnn.distributed.shard import shard_order, steps_per_epoch
from ddnn.distributed.warmup import with_warmup
from ddnn.errors import DdnnError


def test_shards_form_the_single_process_global_batches():
    n, workers, b = 96, 3, 4
    single = shard_order(n, 1, 0, seed=7, epoch=2)
    shards = [shard_order(n, workers, r, seed=7, epoch=2) for r in range(workers)]
    for k in range(steps_per_epoch(n, workers, b)):
        together = torch.cat([s[k * b : (k + 1) * b] for s in shards])
        assert sorted(together.tolist()) == sorted(single[k * b * workers : (k + 1) * b * workers])


def test_uneven_data_gives_every_rank_the_same_step_count():
    shards = [shard_order(10, 3, r, seed=0, epoch=1) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(torch.cat(shards).tolist()) == set(range(10))


def test_rates_and_bounds():
    assert parse_rate("100mbit") == 100e6
    assert parse_rate("1mbps") == 8e6  # tc: bps means bytes per second
    with pytest.raises(DdnnError, match="100mbit"):
        parse_rate("fast")
    g, r = 250_000, 100e6  # 20 ms per gradient over one link
    assert bound_seconds("allreduce", "sync", 2, g, r) == pytest.approx(0.02)
    assert bound_seconds("allreduce", "sync", 4, g, r) == pytest.approx(0.03)
    assert bound_seconds("ps", "sync", 4, g, r) == pytest.approx(0.10)


def test_config_mistakes_say_what_to_do():
    with pytest.raises(DdnnError, match="allreduce only"):
        DistConfig(strategy="ps", compress="fp16").validate()
    rec = DistConfig(lr_scaling="linear").record(4, 64, 0.05)
    assert rec["global_batch"] == 256 and rec["lr"] == pytest.approx(0.2)
    assert DistConfig(strategy="ps").record(5, 64, 0.05)["workers"] == 4


def test_lr_scaling_rules_and_the_record():
    assert DistConfig(lr_scaling="sqrt").scaled_lr(0.05, 4) == pytest.approx(0.1)
    assert DistConfig(lr_scaling="none").scaled_lr(0.05, 4) == pytest.approx(0.05)
    async_ps = DistConfig(strategy="ps", ps_mode="async", lr_scaling="linear")
    assert async_ps.scaled_lr(0.05, 4) == pytest.approx(0.05)  # global batch stays 64
    rec = DistConfig(lr_scaling="sqrt", warmup_epochs=1.0).record(4, 64, 0.05)
    assert rec["lr"] == pytest.approx(0.1) and rec["warmup_epochs"] == 1.0
    with pytest.raises(DdnnError, match="warmup"):
        DistConfig(warmup_epochs=-1).validate()


def _sgd(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_rises_from_the_base_to_the_scaled_lr_then_holds():
    opt = _sgd(0.2)  # linear scaling, 4 workers: base lr 0.05
    sched = with_warmup(opt, None, steps=4, start_factor=0.25)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.05, 0.0875, 0.125, 0.1625, 0.2, 0.2, 0.2])
    assert with_warmup(opt, None, steps=0, start_factor=0.25) is None  # no warm-up: unchanged
    assert with_warmup(opt, None, steps=5, start_factor=1.0) is None  # nothing scaled


def test_warmup_composes_with_the_schedule_and_resumes():
    def make():
        opt = _sgd(0.2)
        inner = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        return opt, inner, with_warmup(opt, inner, steps=3, start_factor=0.5)

    ref_opt = _sgd(0.2)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=10)
    opt, _, sched = make()
    for t in range(8):
        opt.step()
        ref_opt.step()
        sched.step()
        ref.step()
        want = ref_opt.param_groups[0]["lr"] * (0.5 + 0.5 * min(1.0, (t + 1) / 3))
        assert opt.param_groups[0]["lr"] == pytest.approx(want)
        if t == 1:
            saved = json.loads(json.dumps(sched.state_dict()))  # train_state.json holds it
    opt2, _, sched2 = make()
    sched2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == pytest.approx(
        0.5 * (0.2 * (1 + math.cos(math.pi * 2 / 10))) * (0.5 + 0.5 * 2 / 3)
    )


def test_distributed_training_refuses_a_run_folder_without_overwrite(tmp_path, capsys):
    from ddnn.cli import main

    (tmp_path / "config.json").write_text("{}")  # a run was trained here
    argv = ["train", "lenet5", "--dataset", "synthetic", "--nproc", "2", "--out", str(tmp_path)]
    assert main(argv) == 2  # refused before any process starts
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
