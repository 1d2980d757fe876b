"""Your own data: folders of PNG or JPEG images (one subfolder per class) and `.npz` arrays.

Folder layouts (`train/` and `test/` on top, or one set carved into train and test with the seed):

    PATH/[train|test]/<class>/<name>.png            one view
    PATH/[train|test]/<view>/<class>/<name>.png     one subfolder per camera (multi-view)

Multi-view samples are matched by class and file name (without extension); a file missing in one
view is that device missing (`Split.present`), filled with zeros. The images are read once into a
preallocated uint8 array, so a folder never sits in memory twice. Unreadable or truncated files are
refused, not skipped: a run records where its data came from and is evaluated again from it, so
the set of samples must not depend on which files one reader happens to manage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ddnn.data.datasets import Dataset, ImageSize, Split, carve, empty_like, register
from ddnn.errors import DdnnError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.2  # carved with the seed when a folder or file has no separate test set
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class _Sample:
    key: str  # class/name without extension: what matches a sample across views
    label: int
    files: tuple[Path | None, ...]  # one per view; None: missing in that view


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _view_folders(root: Path) -> list[Path]:
    """[root] for one view, or root's view subfolders when its subfolders hold folders."""
    subs = _subdirs(root)
    if subs and all(_subdirs(s) for s in subs):
        return subs
    return [root]


def _scan(root: Path) -> tuple[list[str], dict[str, dict[str, list[Path | None]]], list[str]]:
    """(view names, class -> name -> file per view, class names) of one split folder."""
    views = _view_folders(root)
    table: dict[str, dict[str, list[Path | None]]] = {}
    for v, view in enumerate(views):
        for cls in _subdirs(view):
            for f in _images_in(cls):
                row = table.setdefault(cls.name, {}).setdefault(f.stem, [None] * len(views))
                row[v] = f
    names = [v.name for v in views] if views != [root] else [""]  # "": the one view
    return names, table, sorted(table)


def _samples(
    root: Path, table: dict[str, dict[str, list[Path | None]]], classes: list[str]
) -> list[_Sample]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(table) - set(index))
    if unknown:
        raise DdnnError(f"{root}: classes {unknown} are not in the training classes {classes}")
    return [
        _Sample(f"{c}/{name}", index[c], tuple(files))
        for c in sorted(table)
        for name, files in sorted(table[c].items())
    ]


def _open(path: Path) -> Any:  # a PIL image
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()  # decode now: a truncated file fails here, not later
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DdnnError(
            f"{path}: not a readable image ({exc}); unreadable or truncated files are refused, "
            "not skipped: fix or remove it"
        ) from exc
    return img


def read_image(
    path: Path | str, *, channels: int | None = None, size: ImageSize = None
) -> np.ndarray:
    """[C, H, W] uint8 (a writable copy) of one PNG or JPEG file: grey stays 1 channel and
    everything else becomes RGB, unless `channels` (1 or 3) asks for one; resized to `size`
    (H, W) when given. Used by the folder datasets and by `ddnn device --images`."""
    img = _open(Path(path))
    grey = img.mode in GREY_MODES if channels is None else channels == 1
    img = img.convert("L" if grey else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        from PIL import Image

        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.array(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class _Reader:
    """Reads files into one preallocated array, checking they all share channels and size."""

    def __init__(self, size: ImageSize) -> None:
        self.size = size
        self.first: tuple[Path, tuple[int, ...]] | None = None

    def read(self, path: Path) -> np.ndarray:
        pixels = read_image(path, size=self.size)
        if self.first is None:
            self.first = (path, pixels.shape)
        elif pixels.shape != self.first[1]:
            first, shape = self.first
            if pixels.shape[0] != shape[0]:
                raise DdnnError(
                    f"mixed channel counts: {first} has {shape[0]}, {path} has {pixels.shape[0]}; "
                    "convert the images to all grey or all colour"
                )
            raise DdnnError(
                f"mixed image sizes: {first} is {shape[1]}x{shape[2]}, {path} is "
                f"{pixels.shape[1]}x{pixels.shape[2]} (height x width); pass --image-size H W "
                "to resize them all"
            )
        return pixels

    def shape(self, samples: list[_Sample]) -> tuple[int, ...]:
        for s in samples:
            for f in s.files:
                if f is not None:
                    return self.read(f).shape
        raise AssertionError("no files")  # pragma: no cover - callers check for images

    def fill(self, samples: list[_Sample], desc: str) -> Split:
        views = len(samples[0].files)
        c, h, w = self.shape(samples)
        images = np.zeros((len(samples), views * c, h, w), dtype=np.uint8)
        present = np.zeros((len(samples), views), dtype=bool)
        files = sum(f is not None for s in samples for f in s.files)
        bar = tqdm(total=files, desc=desc, unit="img", mininterval=1.0, disable=files < 2000)
        for n, s in enumerate(samples):
            for v, f in enumerate(s.files):
                if f is not None:
                    images[n, v * c : (v + 1) * c] = self.read(f)
                    present[n, v] = True
                    bar.update()
        bar.close()
        labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
        mask = torch.from_numpy(present) if views > 1 else None
        return Split(torch.from_numpy(images), labels, mask)


def _require_dir(data_dir: Path | None, name: str) -> Path:
    if data_dir is None:
        raise DdnnError(f"{name}: pass --data-dir with the data's folder or file")
    if not data_dir.exists():
        raise DdnnError(f"{name}: {data_dir} does not exist (check --data-dir)")
    return data_dir


@register("folder")
def _folder(data_dir: Path | None, seed: int, image_size: ImageSize) -> Dataset:
    root = _require_dir(data_dir, "folder")
    if not root.is_dir():
        raise DdnnError(f"folder: {root} is not a folder of class subfolders")
    split_dirs = {p.name: p for p in _subdirs(root)}
    has_test = "train" in split_dirs and "test" in split_dirs
    train_root = split_dirs["train"] if has_test else root
    view_names, table, classes = _scan(train_root)
    if not classes:
        raise DdnnError(
            f"folder: no images in {train_root} (expected <class>/<name>.png or .jpg, or "
            f"<view>/<class>/<name>.png; suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    if len(classes) < 2:
        raise DdnnError(
            f"folder: {train_root} has a single class ({classes[0]!r}); a classifier needs "
            "at least two class subfolders"
        )
    reader = _Reader(image_size)
    train = reader.fill(_samples(train_root, table, classes), "reading train images")
    if has_test:
        test_root = split_dirs["test"]
        test_views, test_table, _ = _scan(test_root)
        if test_views != view_names:
            raise DdnnError(f"folder: test views {test_views} differ from train views {view_names}")
        if not test_table:
            raise DdnnError(f"folder: no images in {test_root}")
        test = reader.fill(_samples(test_root, test_table, classes), "reading test images")
    else:
        train, test = carve(train, TEST_FRACTION, seed)
    views = len(view_names)
    if views > 1:
        log.info("folder %s: %d views %s", root, views, view_names)
    return Dataset("folder", tuple(classes), train, empty_like(train), test, views=views)


def _npz_split(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DdnnError(f"{path}: needs arrays 'x' and 'y', has {sorted(z.files)}")
            names = tuple(str(c) for c in z["classes"]) if "classes" in z else None
            x, y = z["x"], z["y"]
    except (OSError, ValueError) as exc:
        raise DdnnError(f"{path}: not a readable .npz file ({exc})") from exc
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DdnnError(
            f"{path}: x must be uint8 [N, H, W] or [N, H, W, C], got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DdnnError(f"{path}: y must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    return x, y, names


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    images = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # [N, C, H, W]
    return Split(
        torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(y.astype(np.int64))
    )


@register("npz")
def _npz(data_dir: Path | None, seed: int, image_size: ImageSize) -> Dataset:
    path = _require_dir(data_dir, "npz")
    files = [path / "train.npz", path / "test.npz"] if path.is_dir() else [path]
    for f in files:
        if not f.is_file():
            raise DdnnError(f"npz: {f} not found (a folder needs train.npz and test.npz)")
    parts = [_npz_split(f) for f in files]
    names = parts[0][2]
    n_classes = len(names) if names else int(max(int(p[1].max(initial=0)) for p in parts)) + 1
    for f, (x, y, _) in zip(files, parts, strict=True):
        if len(y) == 0:
            raise DdnnError(f"{f}: no samples")
        if y.min() < 0 or y.max() >= n_classes:
            raise DdnnError(
                f"{f}: labels out of range: {int(y.min())}..{int(y.max())}, the classes are "
                f"0..{n_classes - 1}"
            )
        if x.shape[1:] != parts[0][0].shape[1:]:
            raise DdnnError(
                f"npz: {files[0]} images are {parts[0][0].shape[1:]}, {f} {x.shape[1:]}"
            )
    if n_classes < 2:
        raise DdnnError(f"npz: {files[0]} has a single class; a classifier needs at least two")
    train = _to_split(parts[0][0], parts[0][1])
    if len(parts) == 2:
        test = _to_split(parts[1][0], parts[1][1])
    else:
        train, test = carve(train, TEST_FRACTION, seed)
    class_names = names or tuple(str(i) for i in range(n_classes))
    return Dataset("npz", class_names, train, empty_like(train), test)
