"""The dataset registry: every dataset gives train / validation / test splits of uint8 images.

Images stay uint8 [N, C, H, W] in memory (Fashion-MNIST: 55 MB) and become float in [0, 1] per
batch; thresholds are calibrated on validation and reported on test. A multi-view dataset (one
camera per device) stacks its V views along channels, [N, V*C, H, W], and says per sample which
views exist (`Split.present`): a missing view is a missing device, not an error.
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
    present: Tensor | None = None  # [N, V] bool for multi-view data (None: every view there)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first n samples (all when n is None): tests and quick runs use small slices."""
        return self if n is None else self.take(slice(0, n))

    def take(self, index: Tensor | slice) -> Split:
        present = None if self.present is None else self.present[index]
        return Split(self.images[index], self.labels[index], present)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x [B, C, H, W] float in [0, 1], y [B]); plain slicing beats a DataLoader here."""
        for x, y, _ in self.batches_present(batch_size, shuffle, generator):
            yield x, y

    def batches_present(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """`batches` plus each batch's view presence [B, V] bool (None: all views present)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            idx = (
                order[start : start + batch_size]
                if order is not None
                else slice(start, start + batch_size)
            )
            present = None if self.present is None else self.present[idx]
            yield self.images[idx].float().div_(255.0), self.labels[idx], present


@dataclass
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    views: int = 1  # cameras stacked along channels; each device of the model sees one

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


ImageSize = tuple[int, int] | None  # (height, width) to resize to; None: as stored
Loader = Callable[[Path | None, int, ImageSize], Dataset]
_REGISTRY: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def create_dataset(
    name: str,
    data_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    image_size: ImageSize = None,
) -> Dataset:
    """Load a registered dataset; the validation split is carved from train with `seed`.

    `image_size` (H, W) resizes every image; loaders that read files resize each one as they
    read it, the others are resized here in one go."""
    if name not in _REGISTRY:
        raise DdnnError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise DdnnError(f"--image-size takes a positive height and width, got {image_size}")
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    ds = _REGISTRY[name](Path(data_dir) if data_dir else None, seed, size)
    if size is not None and ds.input_shape[1:] != size:
        ds.train, ds.val, ds.test = (resize_split(s, size) for s in (ds.train, ds.val, ds.test))
    if val_fraction > 0 and len(ds.val) == 0:
        ds.train, ds.val = carve(ds.train, val_fraction, seed)
    log.info(
        "dataset %s: %d train, %d val, %d test, shape %s",
        name, len(ds.train), len(ds.val), len(ds.test), ds.input_shape,
    )  # fmt: skip
    return ds


def resize_split(split: Split, size: tuple[int, int]) -> Split:
    """Bilinear resize of uint8 images to (H, W), in chunks so memory stays bounded."""
    out = torch.empty((len(split), split.images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, len(split), 4096):
        x = split.images[start : start + 4096].float()
        y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out[start : start + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return Split(out, split.labels, split.present)


def carve(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, carved): a seeded random `fraction` of `split` taken out (validation, test)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=g)
    n_val = round(len(split) * fraction)
    val, train = order[:n_val], order[n_val:]
    return split.take(train), split.take(val)


def empty_like(split: Split) -> Split:
    return split.take(slice(0, 0))


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
    return Dataset(name, class_names, train, empty_like(train), test)


@register("fashion-mnist")
def _fashion_mnist(data_dir: Path | None, seed: int, image_size: ImageSize) -> Dataset:
    hint = (
        "Install the Debian package (apt-get install dataset-fashion-mnist) or pass --data-dir "
        "with the four IDX files."
    )
    return _idx_dataset("fashion-mnist", data_dir or FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, hint)


@register("mnist")
def _mnist(data_dir: Path | None, seed: int, image_size: ImageSize) -> Dataset:
    if data_dir is None:
        raise DdnnError("mnist: pass --data-dir with the four MNIST IDX files (gzipped or not)")
    return _idx_dataset("mnist", data_dir, tuple(str(i) for i in range(10)), "Check --data-dir.")


@register("digits")
def _digits(data_dir: Path | None, seed: int, image_size: ImageSize) -> Dataset:
    """scikit-learn's bundled 8x8 digits, resized to 28x28 so the MNIST-sized models fit;
    `--image-size 8 8` keeps them native (resized from the 8x8 values, not from 28x28)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    size = image_size or (28, 28)
    if size != (8, 8):
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = carve(Split(images, labels), 0.2, seed)
    return Dataset("digits", tuple(str(i) for i in range(10)), train, empty_like(train), test)


@register("synthetic")
def _synthetic(data_dir: Path | None, seed: int, image_size: ImageSize) -> Dataset:
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
    train, test = carve(split, 0.25, seed)
    return Dataset(
        "synthetic", tuple(f"c{i}" for i in range(n_classes)), train, empty_like(train), test
    )
