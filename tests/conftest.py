"""Small trained models shared by the foundation tests (trained once per session, in seconds)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ddnn.data.datasets import create_dataset
from ddnn.train.config import load_experiment
from ddnn.train.trainer import Trainer

# the host's calibration cache (emulation/calibrate.py): one per test session, not the user's
os.environ.setdefault("DDNN_CACHE_DIR", tempfile.mkdtemp(prefix="ddnn-test-cache-"))


def train_tiny(preset: str, folder: Path, epochs: int = 2, **overrides) -> Path:
    exp = load_experiment(preset, dataset="synthetic", epochs=epochs, batch_size=64, **overrides)
    data = create_dataset("synthetic", seed=exp.train.seed, val_fraction=exp.train.val_fraction)
    Trainer(exp, folder, dataset=data, progress=False).fit()
    return folder


@pytest.fixture(scope="session")
def tiny_ddnn(tmp_path_factory) -> Path:
    return train_tiny("ddnn", tmp_path_factory.mktemp("ddnn") / "run")


@pytest.fixture(scope="session")
def tiny_multiview(tmp_path_factory) -> Path:
    return train_tiny("ddnn-multiview", tmp_path_factory.mktemp("mv") / "run")


@pytest.fixture(scope="session")
def trainer():
    """The tiny-training function itself, for tests that need their own run."""
    return train_tiny


@pytest.fixture(scope="session")
def tiny_3tier(tmp_path_factory) -> Path:
    return train_tiny("ddnn-3tier", tmp_path_factory.mktemp("3tier") / "run", epochs=1)
