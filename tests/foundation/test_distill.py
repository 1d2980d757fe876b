"""`ddnn train --from RUN --distill STORE`: the local exit learns from the cloud's answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddnn.cli import main
from ddnn.data.datasets import create_dataset
from ddnn.data.shifted import shift_images
from ddnn.errors import DdnnError
from ddnn.evaluate.policy import confident
from ddnn.nn.entropy import normalized_entropy_np
from ddnn.store.artifact import open_model
from ddnn.store.collection import Collector, Record
from ddnn.train.distill import DistillConfig, distill

SHIFT = {"contrast": 0.7, "brightness": 0.2, "shift": 2}


def shifted_views(split, seed: int) -> torch.Tensor:
    """[N, 1, C, H, W] in [0, 1]: the split's images under a shift the model never saw."""
    images = shift_images(split.images[:, 0].numpy(), seed=seed, **SHIFT)
    return torch.from_numpy(images).float().div(255)[:, None, None]


@torch.no_grad()
def collect(run, store, views: torch.Tensor) -> None:
    """What a server collects from devices that offload everything: features, cloud answers."""
    model = open_model(run).load()
    final = model.spec.exit_sections[-1].name
    logits = model(views)[final].numpy()  # [N, C]
    feats = model.run_device(0, views[:, 0]).features.numpy()  # [N, ...] +-1
    entropy = normalized_entropy_np(logits)
    with Collector(store, max_bytes=10**8, max_count=10**6) as collector:
        for i in range(len(views)):
            collector.offer(Record(model.spec.name, 1, 1, "features", feats[i : i + 1], None,
                                   int(logits[i].argmax()), 1, float(entropy[i])))  # fmt: skip


@torch.no_grad()
def local_fraction(run, views: torch.Tensor) -> float:
    stored = open_model(run)
    model, local = stored.load(), stored.spec.exit_sections[0]
    logits = model(views)[local.name].numpy()
    preds = logits.argmax(-1)
    return float(confident(normalized_entropy_np(logits), preds, local.exit.threshold).mean())


@pytest.fixture(scope="module")
def shifted(tiny_ddnn, tmp_path_factory):
    data = create_dataset("synthetic", seed=0)
    folder = tmp_path_factory.mktemp("distill")
    collect(tiny_ddnn, folder / "store", shifted_views(data.train.head(300), seed=1))
    return folder, shifted_views(data.test, seed=2)


def test_distill_makes_a_version_whose_local_exit_answers_more_shifted_samples(tiny_ddnn, shifted):
    folder, test_views = shifted
    out = folder / "v2"
    report = distill(tiny_ddnn, folder / "store", out, DistillConfig(max_entropy=0.5, epochs=5))
    assert report["version"] == 2 and open_model(out).version == 2
    assert report["after"]["agreement"] >= report["before"]["agreement"]
    assert local_fraction(out, test_views) > local_fraction(tiny_ddnn, test_views)


def test_the_new_version_keeps_the_trunk_and_the_server_section_bit_for_bit(tiny_ddnn, shifted):
    folder, _ = shifted
    out = folder / "v2-pair"
    distill(tiny_ddnn, folder / "store", out, DistillConfig(max_entropy=0.5, epochs=2))
    old, new = open_model(tiny_ddnn), open_model(out)
    a, b = old.load(), new.load()
    kept = [(a.upper[name], b.upper[name]) for name in a.upper]
    kept.append((a.devices[0].body, b.devices[0].body))
    for before, after in kept:
        pairs = zip(before.state_dict().values(), after.state_dict().values(), strict=True)
        assert all(torch.equal(x, y) for x, y in pairs)
    heads = zip(
        a.devices[0].exit_head.parameters(), b.devices[0].exit_head.parameters(), strict=True
    )
    assert not all(torch.equal(x, y) for x, y in heads)
    assert new.spec.thresholds == old.spec.thresholds and new.parent == str(tiny_ddnn.resolve())


def test_the_cli_distills_and_refuses_a_store_of_another_version(tiny_ddnn, shifted, capsys):
    folder, _ = shifted
    out = folder / "cli-v2"
    argv = ["train", "--from", str(tiny_ddnn), "--distill", str(folder / "store"),
            "--max-entropy", "0.5", "--epochs", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "v1 -> v2" in capsys.readouterr().out
    with pytest.raises(DdnnError, match="holds no records of that model/version"):
        distill(out, folder / "store", folder / "v3", DistillConfig())


def test_distill_wants_labels(tiny_ddnn, shifted):
    folder, _ = shifted
    with pytest.raises(DdnnError, match="raise --max-entropy"):
        distill(tiny_ddnn, folder / "store", folder / "none", DistillConfig(max_entropy=0.0))
    assert not (folder / "none").exists()
    assert np.isfinite(DistillConfig().max_entropy)


def test_ddnn_collect_with_the_model_fills_in_the_local_answers(tiny_ddnn, shifted, capsys):
    folder, _ = shifted
    assert main(["collect", str(folder / "store"), "--model", str(tiny_ddnn), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["with_local_answer"] == 300
    assert 0.0 <= summary["local_agrees"] <= 1.0
