"""Your own data: image folders and .npz files, colour and any size, multi-view with missing
views, the data source a run records, and one clear line for each kind of bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ddnn.cli import main
from ddnn.data.colour import make_colour
from ddnn.data.datasets import create_dataset
from ddnn.data.source import DataSource
from ddnn.errors import DdnnError
from ddnn.model.inputs import fit_to_data
from ddnn.store.artifact import open_model
from ddnn.train.config import load_experiment
from ddnn.train.trainer import train_experiment


def write_png(path, size=(12, 12), colour=True, value=None):
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    shape = (*size, 3) if colour else size
    arr = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_folder(root, classes=("cat", "dog"), per_class=6, **kw):
    for c in classes:
        for i in range(per_class):
            write_png(root / c / f"{i}.png", **kw)
    return root


def test_a_colour_folder_with_train_and_test_loads_with_class_names_from_folders(tmp_path):
    make_folder(tmp_path / "train", per_class=10)
    make_folder(tmp_path / "test", per_class=3)
    ds = create_dataset("folder", tmp_path, val_fraction=0.2)
    assert ds.class_names == ("cat", "dog") and ds.input_shape == (3, 12, 12)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 6)
    assert ds.train.images.dtype == torch.uint8 and ds.views == 1


def test_a_single_folder_is_carved_into_train_and_test_by_the_seed(tmp_path):
    make_folder(tmp_path, per_class=10, colour=False)
    a = create_dataset("folder", tmp_path, seed=1, val_fraction=0.0)
    b = create_dataset("folder", tmp_path, seed=1, val_fraction=0.0)
    assert a.input_shape == (1, 12, 12) and (len(a.train), len(a.test)) == (16, 4)
    assert torch.equal(a.test.images, b.test.images)


def test_mixed_sizes_name_two_files_and_image_size_resizes_them(tmp_path):
    make_folder(tmp_path, per_class=2)
    write_png(tmp_path / "dog" / "big.png", size=(20, 16))
    with pytest.raises(DdnnError, match=r"mixed image sizes: .*\.png is 12x12, .*\.png is 20x16"):
        create_dataset("folder", tmp_path)
    ds = create_dataset("folder", tmp_path, image_size=(32, 24))
    assert ds.input_shape == (3, 32, 24)


@pytest.mark.parametrize(
    "case, message",
    [("empty", "no images"), ("one class", "single class"), ("truncated", "refused"),
     ("channels", "mixed channel counts")],
)  # fmt: skip
def test_bad_folders_are_one_clear_error(tmp_path, case, message):
    if case == "one class":
        make_folder(tmp_path, classes=("cat",))
    elif case == "empty":
        (tmp_path / "cat").mkdir()
        (tmp_path / "cat" / "notes.txt").write_text("no images here")
    else:
        make_folder(tmp_path)
    if case == "truncated":
        path = tmp_path / "dog" / "3.png"
        path.write_bytes(path.read_bytes()[:40])
    if case == "channels":
        write_png(tmp_path / "dog" / "grey.png", colour=False)
    with pytest.raises(DdnnError, match=message):
        create_dataset("folder", tmp_path)


def test_npz_file_is_carved_and_a_folder_has_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (20, 10, 10, 3), dtype=np.uint8), np.arange(20) % 3
    np.savez(tmp_path / "all.npz", x=x, y=y)
    ds = create_dataset("npz", tmp_path / "all.npz", val_fraction=0.0)
    assert ds.input_shape == (3, 10, 10) and ds.num_classes == 3 and len(ds.test) == 4
    np.savez(tmp_path / "train.npz", x=x[:, :, :, 0], y=y, classes=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "test.npz", x=x[:5, :, :, 0], y=y[:5])
    ds = create_dataset("npz", tmp_path, val_fraction=0.0)
    assert ds.input_shape == (1, 10, 10) and ds.class_names == ("a", "b", "c")
    assert len(ds.test) == 5


def test_npz_labels_out_of_range_are_refused(tmp_path):
    x = np.zeros((6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(DdnnError, match="labels out of range"):
        create_dataset("npz", tmp_path / "d.npz")


def test_a_view_missing_a_sample_is_that_device_missing(tmp_path):
    for v in range(2):
        make_folder(tmp_path / f"cam{v}", per_class=4)
    (tmp_path / "cam1" / "dog" / "2.png").unlink()
    ds = create_dataset("folder", tmp_path, val_fraction=0.0)
    assert ds.views == 2 and ds.input_shape == (6, 12, 12)
    everything = ds.train.take(torch.arange(len(ds.train)))
    both = torch.cat([everything.present, ds.test.present])
    assert int((~both).sum()) == 1 and bool(both.any(dim=1).all())


def test_digits_at_their_native_8x8():
    assert create_dataset("digits", image_size=(8, 8)).input_shape == (1, 8, 8)


def test_presets_fit_colour_inputs_of_other_sizes(tmp_path):
    make_folder(tmp_path, per_class=4, size=(32, 32))
    data = create_dataset("folder", tmp_path, val_fraction=0.0)
    spec = fit_to_data(load_experiment("ddnn-multiview").model, data)
    assert spec.views.size == (23, 23) and spec.views.offsets[3] == (9, 9)
    assert spec.view_shape == (3, 23, 23)
    assert fit_to_data(load_experiment("ddnn").model, data).input_shape == (3, 32, 32)


def test_an_image_size_the_layers_cannot_take_fails_before_the_run_folder(tmp_path):
    make_folder(tmp_path / "data", per_class=4)
    exp = load_experiment(
        "lenet5", dataset="folder", data_dir=str(tmp_path / "data"), image_size=(6, 6)
    )
    # the spec's shape inference names the layer; the trial build backs it up
    refused = r"lenet5.*(cannot take 3x6x6 inputs|larger than its input)"
    with pytest.raises(DdnnError, match=refused):
        train_experiment(exp, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_records_its_data_and_evaluate_needs_no_flags(tmp_path, capsys):
    data = make_folder(tmp_path / "data", per_class=12, size=(16, 16))
    exp = load_experiment(
        "ddnn", dataset="folder", data_dir=str(data), epochs=1, image_size=(16, 16), seed=3
    )
    train_experiment(exp, tmp_path / "run", progress=False)
    doc = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert doc["data"] == {
        "dataset": "folder", "path": str(data.resolve()), "image_size": [16, 16], "seed": 3
    }  # fmt: skip
    stored = open_model(tmp_path / "run")
    assert stored.data == DataSource("folder", str(data.resolve()), (16, 16), 3)
    assert stored.dataset == "folder" and stored.spec.input_shape == (3, 16, 16)
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    assert "accuracy" in capsys.readouterr().out
    shutil.move(data, tmp_path / "moved")
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(data.resolve()) in err and "--data-dir" in err and len(err.splitlines()) == 1
    argv = ["evaluate", str(tmp_path / "run"), "--data-dir", str(tmp_path / "moved"), "--json"]
    assert main(argv) == 0


def write_fashion_like(folder, n=12):
    """Four uncompressed IDX files, labels cycling 0..3 so every split has every class."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        x, y = rng.integers(0, 255, (n, 28, 28)), np.arange(n) % 4
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(
                int(d).to_bytes(4, "big") for d in arr.shape
            )
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.astype(np.uint8).tobytes())


def test_make_colour_writes_class_folders_of_colour_pngs(tmp_path):
    write_fashion_like(tmp_path)
    written = make_colour(tmp_path / "out", source=tmp_path, size=16, train=8, test=4)
    assert written == {"train": 8, "test": 4}
    ds = create_dataset("folder", tmp_path / "out", val_fraction=0.0)
    assert ds.input_shape == (3, 16, 16) and len(ds.test) == 4
    views = make_colour(tmp_path / "mv", source=tmp_path, train=8, test=4, views=3, missing=0.0)
    assert views == {"train": 24, "test": 12}
    assert create_dataset("folder", tmp_path / "mv", val_fraction=0.0).views == 3


def test_device_images_are_read_in_the_models_channels_and_size(tmp_path):
    from ddnn.runtime.cli import _read_image

    make_folder(tmp_path, per_class=2, size=(16, 16))
    data = create_dataset("folder", tmp_path, val_fraction=0.0)
    spec = fit_to_data(load_experiment("ddnn").model, data)
    assert _read_image(str(tmp_path / "cat" / "0.png"), spec).shape == (3, 16, 16)
    write_png(tmp_path / "small.jpg", size=(8, 8))
    with pytest.raises(DdnnError, match="image is 8x8, the model takes 16x16"):
        _read_image(str(tmp_path / "small.jpg"), spec)
