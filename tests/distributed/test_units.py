"""Fast checks without process groups: sharding, rates, bounds, config."""

from __future__ import annotations

import pytest
import torch

from ddnn.distributed.bench import bound_seconds
from ddnn.distributed.config import DistConfig, parse_rate
from ddnn.distributed.shard import shard_order, steps_per_epoch
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
