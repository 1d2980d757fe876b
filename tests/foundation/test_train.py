import json

import torch

from ddnn.data.datasets import create_dataset
from ddnn.store.artifact import read_spec_doc
from ddnn.train.config import load_experiment
from ddnn.train.loss import joint_loss, target_maps
from ddnn.train.trainer import Trainer, random_presence, train_experiment


def test_joint_loss_is_the_weighted_sum_and_maps_other():
    spec = load_experiment("big-little").model.with_dataset(
        10, (1, 28, 28), tuple("abcdefghij"), 0, 1
    )
    maps = target_maps(spec)
    assert maps["device"].tolist() == [5, 0, 5, 5, 5, 1, 5, 2, 3, 4]
    logits = {"device": torch.randn(4, 6), "cloud": torch.randn(4, 10)}
    y = torch.tensor([1, 2, 8, 0])
    total, parts = joint_loss(logits, y, spec, maps)
    assert torch.allclose(total, parts["device"] + parts["cloud"])


def test_training_learns_and_writes_the_run_folder(tiny_ddnn):
    lines = (tiny_ddnn / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line) for line in lines]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert set(epochs[0]["val_accuracy"]) == {"device", "cloud"}
    metrics = json.loads((tiny_ddnn / "metrics.json").read_text())
    assert metrics["test"]["accuracy"]["cloud_only"] > 0.9  # the synthetic task is easy
    assert json.loads((tiny_ddnn / "config.json").read_text())["train"]["dataset"] == "synthetic"


def test_resume_continues_after_the_last_epoch(tmp_path, trainer):
    run = trainer("ddnn", tmp_path / "run", epochs=1)
    exp = load_experiment("ddnn", dataset="synthetic", epochs=2, batch_size=64)
    train_experiment(exp, run, resume=True, progress=False)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_fine_tuning_makes_a_new_version_with_before_and_after(tiny_ddnn, tmp_path):
    exp = load_experiment("ddnn", dataset="synthetic", epochs=1, batch_size=64)
    data = create_dataset("synthetic", seed=1)
    Trainer(exp, tmp_path / "v2", dataset=data, init_from=tiny_ddnn, progress=False).fit()
    doc = read_spec_doc(tmp_path / "v2")
    assert doc["version"] == read_spec_doc(tiny_ddnn)["version"] + 1
    assert doc["parent"].endswith("run")
    assert "before_fine_tuning" in doc["metrics"] and "test" in doc["metrics"]


def test_device_dropout_keeps_one_device():
    present = random_presence(1000, 4, 0.9, torch.Generator().manual_seed(0))
    assert present is not None and bool(present.any(dim=1).all())
    assert random_presence(8, 1, 0.5, torch.Generator()) is None
