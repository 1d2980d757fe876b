import errno
import json

import pytest
import torch

from ddnn.data.datasets import create_dataset
from ddnn.errors import DdnnError
from ddnn.model.views import split_views
from ddnn.store import durable
from ddnn.store.artifact import load_model, open_model, read_spec_doc, save_model


def test_round_trip_is_bit_identical(tiny_ddnn, tmp_path):
    model = load_model(tiny_ddnn)
    x = create_dataset("synthetic").test.images[:16].float() / 255
    views = split_views(x, model.spec)
    before = model(views)
    copy_dir = save_model(model, tmp_path / "copy", version=3)
    again = load_model(copy_dir)
    after = again(views)
    for name in before:
        assert torch.equal(before[name], after[name])
    assert read_spec_doc(copy_dir)["version"] == 3
    assert again.spec == model.spec


def test_one_file_per_part_and_a_device_needs_only_its_own(tiny_multiview):
    files = sorted(p.name for p in (tiny_multiview / "weights").iterdir())
    assert files == sorted([f"device{i}.safetensors" for i in range(4)] + ["cloud.safetensors"])
    full = load_model(tiny_multiview)
    only = load_model(tiny_multiview, parts=["device2"])
    view = torch.rand(3, 1, 20, 20)
    assert torch.equal(full.run_device(2, view).logits, only.run_device(2, view).logits)


def test_tampered_weights_are_refused(tiny_ddnn, tmp_path):
    copy_dir = save_model(load_model(tiny_ddnn), tmp_path / "m")
    path = copy_dir / "weights" / "cloud.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DdnnError, match="hash"):
        load_model(copy_dir)


def test_unknown_format_and_missing_folder(tiny_ddnn, tmp_path):
    copy_dir = save_model(load_model(tiny_ddnn), tmp_path / "m")
    doc = json.loads((copy_dir / "spec.json").read_text())
    doc["format"] = "ddnn-model/99"
    (copy_dir / "spec.json").write_text(json.dumps(doc))
    with pytest.raises(DdnnError, match="unknown model format"):
        load_model(copy_dir)
    with pytest.raises(DdnnError, match="not a folder"):
        load_model(tmp_path / "nothing-here")


def test_spec_records_thresholds_classes_normalization(tiny_ddnn):
    doc = read_spec_doc(tiny_ddnn)
    model = doc["model"]
    assert model["class_names"] == ["c0", "c1", "c2", "c3"]
    assert 0.0 < model["mean"] < 1.0 and model["std"] > 0
    assert model["sections"][0]["tier"] == "device"
    assert "device" in doc["metrics"]["test"]["thresholds"]


def test_a_stored_model_is_read_once_into_typed_fields(tiny_multiview):
    stored = open_model(tiny_multiview)
    doc = read_spec_doc(tiny_multiview)
    assert (stored.name, stored.version, stored.parent) == (doc["name"], doc["version"], None)
    assert stored.spec == load_model(tiny_multiview).spec
    assert stored.hashes == doc["weights"]
    assert stored.parts == [f"device{i}" for i in range(4)] + ["cloud"]
    assert stored.weights_path("device2") == tiny_multiview / "weights" / "device2.safetensors"
    assert stored.metrics["test"] == doc["metrics"]["test"]
    assert stored.dataset == "synthetic"
    assert (
        stored.part_id("cloud") == f"{doc['name']} v1 cloud weights {doc['weights']['cloud'][:12]}"
    )


def test_the_dataset_is_none_when_the_folder_records_none(tiny_ddnn, tmp_path):
    copy_dir = save_model(load_model(tiny_ddnn), tmp_path / "m")
    stored = open_model(copy_dir)
    assert stored.dataset is None and stored.metrics == {}


def test_load_checks_hashes_and_missing_files(tiny_ddnn, tmp_path):
    copy_dir = save_model(load_model(tiny_ddnn), tmp_path / "m")
    stored = open_model(copy_dir)
    (copy_dir / "weights" / "cloud.safetensors").unlink()
    assert stored.load(parts=["device0"]).spec == stored.spec  # a device needs only its file
    with pytest.raises(DdnnError, match="is missing"):
        stored.load()
    with pytest.raises(DdnnError, match="no part 'edge'"):
        stored.load(parts=["edge"])


def test_a_save_that_fails_midway_leaves_the_previous_version_loadable(
    tiny_ddnn, tmp_path, monkeypatch
):
    first = load_model(tiny_ddnn)
    folder = save_model(first, tmp_path / "m", version=1)
    second = load_model(tiny_ddnn)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(1.0)
    real, written = durable.write_file, []

    def write(path, data):  # the disk is full after the first file
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real(path, data)

    monkeypatch.setattr(durable, "write_file", write)
    with pytest.raises(durable.SaveError, match=f"no space left on device while saving {folder}"):
        save_model(second, folder, version=2)
    again = load_model(folder)
    assert read_spec_doc(folder)["version"] == 1
    for name, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)
    assert not list(folder.glob(".saving-*"))


def test_the_same_model_saved_twice_gives_byte_identical_weight_files(tiny_multiview, tmp_path):
    model = load_model(tiny_multiview)
    a, b = save_model(model, tmp_path / "a"), save_model(model, tmp_path / "b")
    names = sorted(p.name for p in (a / "weights").iterdir())
    assert len(names) == 5
    for name in names:
        assert (a / "weights" / name).read_bytes() == (b / "weights" / name).read_bytes()
    docs = [read_spec_doc(a), read_spec_doc(b)]
    assert [d.pop("created") for d in docs] and docs[0] == docs[1]  # only the time differs


def test_a_model_with_non_finite_weights_is_not_saved(tiny_ddnn, tmp_path):
    model = load_model(tiny_ddnn)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(DdnnError, match="NaN or infinite"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m" / "spec.json").exists()
