"""Tiny models for the export tests: every preset with a device section, trained once per session
for one epoch on a slice of `synthetic` (seconds), plus hand-made models whose batch norms are
set to the awkward cases (negative and zero scales, exact ties) without training."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from ddnn.data.datasets import create_dataset
from ddnn.export.verify import verify
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.spec import ExitSpec, LayerSpec, ModelSpec, SectionSpec
from ddnn.store.artifact import save_model
from ddnn.train.config import load_experiment
from ddnn.train.trainer import Trainer

DEVICE_PRESETS = ("ddnn", "ddnn-multiview", "ddnn-3tier", "big-little")
HAS_CC = shutil.which("cc") is not None and shutil.which("make") is not None


def train_tiny(preset: str, folder: Path) -> Path:
    """One epoch on 128 synthetic samples. Big-Little's prioritized classes are remapped to the
    4 synthetic classes (its preset names Fashion-MNIST classes up to 9)."""
    exp = load_experiment(preset, dataset="synthetic", epochs=1, batch_size=64, limit=128)
    sections = list(exp.model.sections)
    dev = sections[0]
    if dev.exit is not None and dev.exit.classes is not None:
        sections[0] = replace(dev, exit=replace(dev.exit, classes=(1, 3)))
        exp = replace(exp, model=replace(exp.model, sections=tuple(sections)))
    data = create_dataset("synthetic", seed=exp.train.seed, val_fraction=exp.train.val_fraction)
    Trainer(exp, folder, dataset=data, progress=False).fit()
    return folder


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    return {p: train_tiny(p, root / p) for p in DEVICE_PRESETS}


LAST_DEVICE = {"ddnn-multiview": 3, "ddnn-3tier": 2}  # check a device other than 0 too
# ONNX export takes ~3 s a file: compare onnxruntime on one binary and one float device section
# (test_onnx.py covers the upper sections)
WITH_ONNX = ("ddnn", "big-little")


@pytest.fixture(scope="session")
def verified(tiny_runs, tmp_path_factory):
    """verify() of every preset's device section, once per session: {preset: (folder, report)}.
    Needs cc; the tests that use it are marked integration."""
    root = tmp_path_factory.mktemp("export_c")
    return {
        p: (
            root / p,
            verify(
                tiny_runs[p], root / p, samples=16, device=LAST_DEVICE.get(p, 0),
                onnx=p in WITH_ONNX,
                cross=p == "ddnn",  # one cross build is enough: the code is the same C
            ),
        )
        for p in DEVICE_PRESETS
    }  # fmt: skip


def custom_model(
    folder: Path,
    layers: list[LayerSpec],
    exit_layers: list[LayerSpec],
    shape: tuple[int, int, int] = (3, 13, 11),
    seed: int = 0,
) -> Path:
    """An untrained one-device model with random latent weights and batch norms that include
    a zero scale, negative scales and exact ties (bn(y) == 0 for an integer y)."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        "custom",
        (
            SectionSpec("device", "device", tuple(layers), exit=ExitSpec(tuple(exit_layers), 0.6)),
            SectionSpec("cloud", "cloud", exit=ExitSpec((LayerSpec("linear", batch_norm=False),))),
        ),
    ).with_dataset(5, shape, tuple(f"c{i}" for i in range(5)), 0.4, 0.3)
    model = HierarchicalModel(spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
                continue
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 3)
            bn.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.5)
            bn.weight.copy_(torch.randn(n, generator=g))  # about half negative
            bn.bias.copy_(torch.randn(n, generator=g))
            bn.weight[0] = 0.0  # constant output
            if n > 2:  # ties: bn(3) == 0 with a negative scale, bn(-1) == 0 with a positive one
                bn.running_mean[1], bn.bias[1], bn.weight[1] = 3.0, 0.0, -1.0
                bn.running_mean[2], bn.bias[2], bn.weight[2] = -1.0, 0.0, 2.0
    save_model(model.eval(), folder)
    return folder
