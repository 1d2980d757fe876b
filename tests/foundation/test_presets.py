import pytest
import torch

from ddnn.errors import DdnnError
from ddnn.evaluate.communication import CommCosts
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.presets import preset_names
from ddnn.model.views import split_views
from ddnn.train.config import load_experiment

FMNIST = dict(
    num_classes=10, input_shape=(1, 28, 28), class_names=tuple("abcdefghij"), mean=0.3, std=0.35
)


def build(name: str) -> HierarchicalModel:
    return HierarchicalModel(load_experiment(name).model.with_dataset(**FMNIST))


def test_all_presets_listed():
    assert set(preset_names()) >= {"lenet5", "ddnn", "ddnn-multiview", "ddnn-3tier", "big-little"}


@pytest.mark.parametrize("name", ["lenet5", "ddnn", "ddnn-multiview", "ddnn-3tier", "big-little"])
def test_every_preset_runs_forward(name):
    model = build(name).eval()
    views = split_views(torch.rand(3, 1, 28, 28), model.spec)
    out = model(views)
    assert list(out) == [s.name for s in model.spec.exit_sections]
    for section in model.spec.exit_sections:
        assert out[section.name].shape == (3, model.spec.exit_num_classes(section))


def test_ddnn_device_sends_packed_bits():
    costs = CommCosts.of(build("ddnn"))
    assert (
        costs.uplink_bytes == 16 * 7 * 7 // 8 and costs.raw_bytes == 784 and costs.score_bytes == 0
    )


def test_device_outputs_are_binary():
    model = build("ddnn").eval()
    feats = model.run_device(0, torch.rand(2, 1, 28, 28)).features
    assert set(feats.unique().tolist()) <= {-1.0, 1.0}


def test_big_little_cloud_sees_raw_input_and_little_has_other():
    model = build("big-little")
    costs = CommCosts.of(model)
    assert costs.uplink_bytes == 784
    assert model.spec.exit_num_classes(model.spec.sections[0]) == 6


def test_lenet5_pads_to_32():
    model = build("lenet5")
    assert model.upper["cloud"].body[0](torch.zeros(1, 1, 28, 28)).shape[-1] == 32


def test_bad_specs_get_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    head = '[model]\nname = "x"\n[[model.sections]]\nname = "c"\n'
    bad.write_text(head + 'tier = "cloud"\nlayers = [{type="conv", out=4, colour=3}]\n')
    with pytest.raises(DdnnError, match="unknown key"):
        load_experiment(str(bad))
    bad.write_text(head + 'tier = "sky"\nexit.layers = [{type="linear"}]\n')
    with pytest.raises(DdnnError, match="tier"):
        load_experiment(str(bad)).model.with_dataset(**FMNIST)
    with pytest.raises(DdnnError, match="valid"):
        load_experiment("ddnn", optimizer="rmsprop")
