"""A colour image-folder dataset made from what is on this machine: Fashion-MNIST items, tinted
and composited onto textured colour backgrounds, written as PNG class folders (`ddnn data
make-colour`).

Colour carries no label: tint and background are drawn independently of the class, so a model
has to find the item's shape through colour noise. With `views` > 1 every sample is seen by
several cameras (its own position, scale, tint and background each), and each camera misses a
sample with probability `missing` (never all of them): the multi-view folder layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddnn.data.datasets import FASHION_MNIST_DIR, create_dataset
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float in [0, 1]: two colours mixed by stripes at an angle, plus noise."""
    a, b = rng.random(3), rng.random(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, freq = rng.random() * np.pi, 0.2 + rng.random() * 0.8
    wave = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))  # [H, W]
    img = wave[..., None] * a + (1 - wave[..., None]) * b
    return np.clip(img + 0.08 * rng.standard_normal((size, size, 3)), 0, 1)


def _composite(item: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One 28x28 grey item -> [size, size, 3] uint8: scaled, placed, tinted, on a background."""
    side = int(rng.integers(round(size * 0.6), size + 1))
    x = torch.from_numpy(item.astype(np.float32) / 255.0)[None, None]
    mask = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear")[0, 0].numpy()
    y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
    img = _background(rng, size)
    tint = 0.3 + 0.7 * rng.random(3)
    region = img[y0 : y0 + side, x0 : x0 + side]
    m = mask[..., None]
    img[y0 : y0 + side, x0 : x0 + side] = region * (1 - m) + tint * m
    return (img * 255).round().astype(np.uint8)


def _folder_name(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def make_colour(
    out: str | Path,
    *,
    source: str | Path = FASHION_MNIST_DIR,
    size: int = 32,
    train: int = 6000,
    test: int = 1000,
    views: int = 1,
    missing: float = 0.1,
    seed: int = 0,
) -> dict[str, int]:
    """Write OUT/train and OUT/test (per view: OUT/<split>/view<v>/) class folders of PNGs;
    returns how many files each split got."""
    from PIL import Image

    if size < 8 or views < 1 or not 0.0 <= missing < 1.0:
        raise DdnnError("make-colour: size >= 8, views >= 1 and 0 <= missing < 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DdnnError(f"make-colour: {out} exists and is not empty; pick a new folder")
    data = create_dataset("fashion-mnist", source, seed, val_fraction=0.0)
    names = [_folder_name(n) for n in data.class_names]
    rng = np.random.default_rng(seed)
    written = {}
    for part, split, count in (("train", data.train, train), ("test", data.test, test)):
        split = split.head(count)
        images, labels = split.images[:, 0].numpy(), split.labels.numpy()
        files = 0
        for i in tqdm(range(len(split)), desc=f"writing {part}", disable=len(split) < 2000):
            seen = rng.random(views) >= missing if views > 1 else np.ones(1, dtype=bool)
            if not seen.any():
                seen[rng.integers(views)] = True
            for v in range(views):
                if not seen[v]:
                    continue
                folder = out / part / (f"view{v}" if views > 1 else "") / names[labels[i]]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_composite(images[i], rng, size)).save(folder / f"{i:05d}.png")
                files += 1
        written[part] = files
    log.info("make-colour: %s in %s", written, out)
    return written
