"""A distribution shift to show learning after deployment: Fashion-MNIST with its contrast,
brightness and position changed, written as `.npz` (what `--dataset npz` reads).

The pixels become `contrast * x + brightness * 255`, clipped, then the image moves by up to
`shift` pixels (a random translation per image, zeros fill in): a camera with other exposure
and framing than the one the model was trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddnn.data.datasets import FASHION_MNIST_DIR, create_dataset
from ddnn.errors import DdnnError


def shift_images(
    images: np.ndarray, *, contrast: float, brightness: float, shift: int, seed: int
) -> np.ndarray:
    """uint8 [N, H, W] -> the shifted uint8 [N, H, W]."""
    x = images.astype(np.float32) * contrast + brightness * 255.0
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if shift == 0:
        return x
    rng = np.random.default_rng(seed)
    n, h, w = x.shape
    pad = np.pad(x, ((0, 0), (shift, shift), (shift, shift)))  # [N, H + 2s, W + 2s]
    dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)  # [N, H]
    cols = dx[:, None] + np.arange(w)  # [N, W]
    return pad[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def make_shifted(
    out: str | Path, *, source: str | Path = FASHION_MNIST_DIR, contrast: float = 0.5,
    brightness: float = 0.4, shift: int = 2, train: int = 6000, test: int = 4000, seed: int = 0,
) -> dict[str, int]:  # fmt: skip
    """Write OUT/train.npz and OUT/test.npz (the first `train` / `test` samples, shifted)."""
    if contrast <= 0 or not -1.0 <= brightness <= 1.0 or shift < 0:
        raise DdnnError("make-shifted: contrast > 0, brightness in [-1, 1], shift >= 0")
    data = create_dataset("fashion-mnist", source, seed, val_fraction=0.0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, (part, split, count) in enumerate(
        (("train", data.train, train), ("test", data.test, test))
    ):
        split = split.head(count)
        x = shift_images(
            split.images[:, 0].numpy(), contrast=contrast, brightness=brightness, shift=shift,
            seed=seed + k,
        )  # fmt: skip
        np.savez(
            out / f"{part}.npz", x=x, y=split.labels.numpy(), classes=np.array(data.class_names)
        )
        written[part] = len(x)
    return written
