"""Colour inputs of other sizes through the device C (issue 16): presets fitted to 3x32x32 and
3x64x64 image folders train, export and match PyTorch bit for bit; 64x64 also on aarch64."""

import shutil

import numpy as np
import pytest
from PIL import Image

from ddnn.export.verify import verify
from ddnn.store.artifact import open_model
from ddnn.train.config import load_experiment
from ddnn.train.trainer import train_experiment

from .conftest import HAS_CC

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not HAS_CC, reason="needs a C compiler (cc) and make"),
]


def colour_folder(root, size: int, per_class: int = 10):
    """Two classes of random colour PNGs, a brighter red channel for one of them."""
    rng = np.random.default_rng(size)
    for k, name in enumerate(("red", "blue")):
        for split, count in (("train", per_class), ("test", 4)):
            for i in range(count):
                img = rng.integers(0, 200, (size, size, 3), dtype=np.uint8)
                img[..., 0 if k == 0 else 2] += 55
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path)
    return root


@pytest.mark.parametrize(
    ("preset", "size", "device", "cross"),
    [("ddnn", 32, 0, False), ("ddnn-multiview", 64, 3, True)],
)
def test_colour_images_of_other_sizes_export_to_c_that_matches_torch(
    tmp_path, preset, size, device, cross
):
    data = colour_folder(tmp_path / "data", size)
    exp = load_experiment(preset, dataset="folder", data_dir=str(data), epochs=1, batch_size=8)
    train_experiment(exp, tmp_path / "run", progress=False)
    spec = open_model(tmp_path / "run").spec
    assert spec.input_shape == (3, size, size)
    report = verify(
        tmp_path / "run", tmp_path / "c", samples=8, device=device, onnx=False, cross=cross
    )
    assert report["passed"], report
    c = report["c"]
    assert c["decisions_identical"] and c["argmax_identical"] and c["differing_feature_bits"] == 0
    if cross and shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64"):
        assert report["aarch64"]["passed"] and report["aarch64"]["identical_to_host"]
