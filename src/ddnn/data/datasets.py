"""The dataset registry: every dataset gives train / validation / test splits of uint8 images.

Images stay uint8 [N, C, H, W] in memory (Fashion-MNIST: 55 MB) and become float in [0, 1] per
batch; thresholds are calibrated on validation and reported on test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddnn.data.idx import read_idx
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass
class Split:
    images: Tensor  # [N, C, H, W] uint8
    labels: Tensor  # [N] int64

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first n samples (all when n is None): tests and quick runs use small slices."""
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x [B, C, H, W] float in [0, 1], y [B]); plain slicing beats a DataLoader here."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            idx = (
                order[start : start + batch_size]
                if order is not None
                else slice(start, start + batch_size)
            )
            yield self.images[idx].float().div_(255.0), self.labels[idx]


@dataclass
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalization(self) -> tuple[float, float]:
        """Mean and std of the training pixels in [0, 1], stored with the model."""
        x = self.train.images.float().div_(255.0)
        return float(x.mean()), float(x.std())


Loader = Callable[[Path | None, int], Dataset]
_REGISTRY: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def create_dataset(
    name: str, data_dir: str | Path | None = None, seed: int = 0, val_fraction: float = 0.1
) -> Dataset:
    """Load a registered dataset; the validation split is carved from train with `seed`."""
    if name not in _REGISTRY:
        raise DdnnError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}")
    ds = _REGISTRY[name](Path(data_dir) if data_dir else None, seed)
    if val_fraction > 0 and len(ds.val) == 0:
        ds.train, ds.val = _carve(ds.train, val_fraction, seed)
    log.info(
        "dataset %s: %d train, %d val, %d test, shape %s",
        name, len(ds.train), len(ds.val), len(ds.test), ds.input_shape,
    )  # fmt: skip
    return ds


def _carve(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=g)
    n_val = round(len(split) * fraction)
    val, train = order[:n_val], order[n_val:]
    return _subset(split, train), _subset(split, val)


def _subset(split: Split, index: torch.Tensor) -> Split:
    return Split(split.images[index], split.labels[index])


def _empty_like(split: Split) -> Split:
    return Split(split.images[:0], split.labels[:0])


def _idx_dataset(name: str, folder: Path, class_names: tuple[str, ...], hint: str) -> Dataset:
    files = {
        "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
    }  # fmt: skip
    arrays = {}
    for key, stem in files.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise DdnnError(f"{name}: {candidates[0]} not found. {hint}")
        arrays[key] = read_idx(path)
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DdnnError(f"{name}: {part} images {x.shape} and labels {y.shape} do not match")
    train = Split(
        torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["train_y"].astype(np.int64)),
    )
    test = Split(
        torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["test_y"].astype(np.int64)),
    )
    return Dataset(name, class_names, train, _empty_like(train), test)


@register("fashion-mnist")
def _fashion_mnist(data_dir: Path | None, seed: int) -> Dataset:
    hint = (
        "Install the Debian package (apt-get install dataset-fashion-mnist) or pass --data-dir "
        "with the four IDX files."
    )
    return _idx_dataset("fashion-mnist", data_dir or FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, hint)


@register("mnist")
def _mnist(data_dir: Path | None, seed: int) -> Dataset:
    if data_dir is None:
        raise DdnnError("mnist: pass --data-dir with the four MNIST IDX files (gzipped or not)")
    return _idx_dataset("mnist", data_dir, tuple(str(i) for i in range(10)), "Check --data-dir.")


@register("digits")
def _digits(data_dir: Path | None, seed: int) -> Dataset:
    """scikit-learn's bundled 8x8 digits, resized to 28x28 so the MNIST-sized models fit."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = _carve(Split(images, labels), 0.2, seed)
    return Dataset("digits", tuple(str(i) for i in range(10)), train, _empty_like(train), test)


@register("synthetic")
def _synthetic(data_dir: Path | None, seed: int) -> Dataset:
    """Generated 28x28 images: a class-specific bar pattern plus noise; learnable in seconds."""
    g = torch.Generator().manual_seed(seed)
    n_classes, n = 4, 1200
    templates = torch.zeros(n_classes, 1, 28, 28)
    for c in range(n_classes):
        templates[c, 0, 4 + 5 * c : 8 + 5 * c, :] = 1.0  # a horizontal bar per class
        templates[c, 0, :, 4 + 5 * c : 8 + 5 * c] = 0.5
    labels = torch.randint(0, n_classes, (n,), generator=g)
    x = templates[labels] + 0.35 * torch.rand(n, 1, 28, 28, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    split = Split(images, labels)
    train, test = _carve(split, 0.25, seed)
    return Dataset(
        "synthetic", tuple(f"c{i}" for i in range(n_classes)), train, _empty_like(train), test
    )
