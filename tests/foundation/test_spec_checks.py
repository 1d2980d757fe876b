"""A bad spec fails before anything trains or loads, as one line naming the section, the layer and
the field: TOML configs through `ddnn train`, stored spec.json files through `ddnn info`."""

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from ddnn.cli import main
from ddnn.errors import DdnnError
from ddnn.evaluate.communication import CommCosts
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.presets import model_spec_from_dict
from ddnn.model.shapes import LAYER_FIELDS, stack_shape
from ddnn.model.spec import LAYER_TYPES
from ddnn.model.spec import LayerSpec as L
from ddnn.nn.blocks import build_layers
from ddnn.train.config import load_experiment

FMNIST = dict(
    num_classes=10, input_shape=(1, 28, 28), class_names=tuple("abcdefghij"), mean=0.3, std=0.35
)
CLOUD = '[[model.sections]]\nname = "cloud"\ntier = "cloud"\nexit.layers = [{type="linear"}]\n'


def toml(device_layers: str, name: str = "t", exit_layers: str = '{type="blinear"}') -> str:
    return (
        f'[model]\nname = "{name}"\n[[model.sections]]\nname = "device"\ntier = "device"\n'
        f"layers = [{device_layers}]\nexit.layers = [{exit_layers}]\n" + CLOUD
    )


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "layers, message",
    [
        ('{type="bconv", out=-5}', "layer 0 (bconv): out must be >= 1, got -5"),
        ('{type="bconv", out=0}, {type="bconv", out=4}', "layer 0 (bconv): out must be >= 1"),
        ('{type="conv", out=4, kernel=40, padding=0}', "layer 0 (conv): kernel 40 is larger"),
        ('{type="linear", out=8}, {type="conv", out=4}', "layer 1 (conv): a conv layer needs an"),
        ('{type="conv", out=4, pool=0}', "layer 0 (conv): pool must be >= 1"),
        ('{type="conv", out=4, pool=64}', "layer 0 (conv): pool 64 is larger than the 28x28"),
        ('{type="conv", out=4, padding=-1}', "layer 0 (conv): padding must be >= 0"),
        ('{type="pad", padding=-1}, {type="bconv", out=4}', "layer 0 (pad): padding must be >="),
        ('{type="pad"}, {type="bconv", out=4}', "layer 0 (pad): a pad layer needs `padding`"),
        ('{type="conv", out=4, stride=0}', "layer 0 (conv): stride must be >= 1"),
        ('{type="dropout", p=1.5}', "layer 0 (dropout): dropout p must be in [0, 1)"),
        ('{type="pool", pool=2, stride=3}', "layer 0 (pool): stride has no effect on a pool"),
        ('{type="pool", pool=2, padding=1}', "layer 0 (pool): padding has no effect"),
        ('{type="bconv", out=4, activation="relu"}', "layer 0 (bconv): activation has no"),
        ('{type="bconv", out=4, batch_norm=false}', "layer 0 (bconv): batch_norm has no"),
        ('{type="linear", out=4, kernel=5}', "layer 0 (linear): kernel has no effect"),
    ],
)
def test_a_bad_layer_is_one_line_naming_section_layer_and_field(layers, message, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(toml(layers))
    argv = ["train", str(config), "--dataset", "synthetic", "--out", str(tmp_path / "run")]
    err = one_line_error(argv, capsys)
    assert f"model 't' section 'device' {message}" in err
    assert not (tmp_path / "run").exists()


BCONV = '{type="bconv", out=4}'


@pytest.mark.parametrize(
    "config, message",
    [
        (toml(BCONV, exit_layers='{type="blinear", out=3}'), "needs 4 logits"),
        (toml(BCONV, exit_layers=""), "the exit makes [4, 28, 28] values"),
        (toml(BCONV).replace('name = "device"', 'name = "dev.ice"'), "'dev.ice' is invalid"),
        (toml(BCONV).replace('name = "cloud"', 'name = "device1"'), "device<N>"),
        (toml(BCONV) + "exit.threshold = 'high'\n", "exit.threshold: expected a number"),
        (toml(BCONV, name="../../escaped"), "model name '../../escaped' is invalid"),
    ],
)
def test_bad_exits_names_and_values_are_one_line(config, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run folder named after the model would land here
    (tmp_path / "bad.toml").write_text(config)
    assert message in one_line_error(["train", "bad.toml", "--dataset", "synthetic"], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"]


def test_a_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    config = tmp_path / "latin1.toml"
    config.write_bytes(toml('{type="bconv", out=4}').replace("t", "\xe9", 1).encode("latin-1"))
    assert "not UTF-8" in one_line_error(["train", str(config)], capsys)


@pytest.fixture
def stored(tiny_ddnn, tmp_path):
    """A copy of a stored model whose spec.json a test may damage: (folder, doc, write)."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_ddnn, folder)
    doc = json.loads((folder / "spec.json").read_text())
    return folder, doc, lambda d: (folder / "spec.json").write_text(json.dumps(d))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.pop("model"), "no 'model' field"),
        (lambda d: d.update(weights=[1, 2]), "'weights' must be an object"),
        (lambda d: d.update(weights={"device0": 5}), "weights['device0'] must be a SHA-256"),
        (lambda d: d.update(version="abc"), "'version' must be an integer version 1..65535"),
        (lambda d: d.update(version=65536), "'version' must be 1..65535, got 65536"),
        (lambda d: d.update(version=True), "'version' must be an integer"),
        (lambda d: d.update(name="../x"), "model name '../x' is invalid"),
        (lambda d: d.update(name="other"), "'name' 'other' differs from the spec's 'ddnn'"),
        (lambda d: d["model"]["sections"][1].update(name="clo.ud"), "section name 'clo.ud'"),
        (lambda d: d["model"].update(std=0), "std > 0"),
        (lambda d: d["model"]["sections"][0]["layers"][0].update(out="x"), "layers[0].out"),
    ],
)  # fmt: skip
def test_a_damaged_spec_json_is_one_line_naming_file_and_field(stored, damage, message, capsys):
    folder, doc, write = stored
    damage(doc)
    write(doc)
    err = one_line_error(["info", str(folder)], capsys)
    assert f"{folder / 'spec.json'}" in err and message in err


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe{"])
def test_a_spec_json_that_is_no_object_or_no_utf8_is_one_line(stored, content, capsys):
    folder = stored[0]
    (folder / "spec.json").write_bytes(content)
    err = one_line_error(["info", str(folder)], capsys)
    assert "expected a JSON object" in err or "not UTF-8" in err


def test_info_into_a_closed_pipe_exits_quietly(tiny_ddnn):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddnn.cli", "info", str(tiny_ddnn)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 141 and err == ""


def test_the_field_table_matches_what_the_blocks_read():
    """A field outside LAYER_FIELDS changes nothing in the built block; one inside does."""
    assert set(LAYER_FIELDS) == set(LAYER_TYPES)
    other = dict(out=5, kernel=1, stride=2, padding=0, pool=2, activation="tanh",
                 batch_norm=False, p=0.5)  # fmt: skip
    for kind in LAYER_TYPES:
        base = L(kind, out=4 if kind in ("conv", "bconv", "linear", "blinear") else 0,
                 padding=1 if kind == "pad" else None)  # fmt: skip
        built = repr(build_layers([base], (2, 8, 8))[0])
        for name, value in other.items():
            changed = repr(build_layers([replace(base, **{name: value})], (2, 8, 8))[0])
            assert (changed != built) == (name in LAYER_FIELDS[kind]), (kind, name)


@pytest.mark.parametrize(
    "layers",
    [
        [L("conv", out=3, kernel=5, stride=2, padding=1, pool=2), L("linear", out=7)],
        [L("pad", padding=2), L("bconv", out=4, kernel=4), L("pool", pool=3), L("dropout", p=0.2)],
        [L("bconv", out=2, kernel=1, stride=3, padding=0), L("conv", out=5, kernel=2, pool=2)],
        [L("blinear", out=6), L("dropout"), L("linear", out=0)],
    ],
)
def test_shape_inference_agrees_with_the_built_modules(layers):
    for shape in [(1, 28, 28), (3, 13, 11)]:
        built = build_layers(layers, shape, final_out=9)[1]
        assert stack_shape(layers, shape, 9, lambda i, layer: "") == built


def test_a_pool_after_the_sign_warns_with_the_bytes_it_costs(caplog):
    exp = load_experiment("ddnn")
    device = exp.model.sections[0]
    layers = (*device.layers, L("pool", pool=2))
    spec = replace(exp.model, sections=(replace(device, layers=layers), *exp.model.sections[1:]))
    with caplog.at_level(logging.WARNING, logger="ddnn.model.spec"):
        spec = spec.with_dataset(**FMNIST)
    uplink = CommCosts.of(HierarchicalModel(spec)).uplink_bytes
    assert uplink == 16 * 3 * 3 * 4
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"{uplink} B a sample instead of {16 * 3 * 3 // 8} B packed" in warning
    assert "section 'device'" in warning and "layer 1 (bconv)" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddnn.model.spec"):
        exp.model.with_dataset(**FMNIST)
    assert not caplog.records  # the preset ends in its sign: packed, no warning


def test_the_spec_check_runs_at_load_time_before_the_dataset_is_known():
    table = {
        "name": "m",
        "sections": [
            {"name": "c", "tier": "cloud", "layers": [{"type": "pool", "pool": 0}],
             "exit": {"layers": [{"type": "linear"}]}},
        ],
    }  # fmt: skip
    with pytest.raises(DdnnError, match=r"section 'c' layer 0 \(pool\): pool must be >= 1"):
        model_spec_from_dict(table)
