import gzip
import struct

import numpy as np
import pytest
import torch

from ddnn.data.datasets import FASHION_MNIST_DIR, create_dataset
from ddnn.data.idx import read_idx
from ddnn.errors import DdnnError
from ddnn.model.views import device_view, split_views
from ddnn.train.config import load_experiment


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_folder(folder, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (n_test, 28, 28)), gz=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), gz=False)


def test_idx_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_mnist_from_a_folder(tmp_path):
    make_idx_folder(tmp_path)
    ds = create_dataset("mnist", tmp_path, val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 10)
    assert ds.input_shape == (1, 28, 28) and ds.train.images.dtype == torch.uint8


@pytest.mark.parametrize(
    "content, message",
    [(b"hello world", "not an IDX"), (bytes([0, 0, 8, 3, 0, 0]), "truncated"),
     (bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]), "corrupt")],
)  # fmt: skip
def test_not_idx_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(DdnnError, match=message):
        read_idx(tmp_path / "x")


def test_missing_dataset_names_the_package_or_data_dir(tmp_path):
    with pytest.raises(DdnnError, match="dataset-fashion-mnist"):
        create_dataset("fashion-mnist", tmp_path)
    with pytest.raises(DdnnError, match="--data-dir"):
        create_dataset("mnist")
    with pytest.raises(DdnnError, match="synthetic"):
        create_dataset("imagenet")


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    ds = create_dataset("fashion-mnist")
    assert (len(ds.train) + len(ds.val), len(ds.test)) == (60000, 10000)
    assert ds.class_names[9] == "Ankle boot"


def test_digits_resized_and_synthetic():
    assert create_dataset("digits").input_shape == (1, 28, 28)
    syn = create_dataset("synthetic")
    assert syn.num_classes == 4 and len(syn.val) > 0


def test_each_device_sees_its_own_crop():
    spec = load_experiment("ddnn-multiview").model.with_dataset(
        10, (1, 28, 28), tuple("abcdefghij"), 0.0, 1.0
    )
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    views = split_views(x, spec)
    assert views.shape == (1, 4, 1, 20, 20)
    assert views[0, 3, 0, 0, 0].item() == 8 * 28 + 8  # bottom-right crop starts at (8, 8)
    assert torch.equal(device_view(x, spec, 1), views[:, 1])
