"""A run folder survives a full disk, a Ctrl-C and damage: every failure ends in one line that says
what to do, and what is on disk stays loadable or is refused, never resumed silently."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load, save_file

from ddnn.cli import main
from ddnn.store import durable
from ddnn.store.artifact import load_model
from ddnn.train.trainer import Trainer

TRAIN = ["train", "ddnn", "--dataset", "synthetic", "--limit", "256"]


def _train(run: Path, *extra: str, epochs: int = 1) -> int:
    return main([*TRAIN, "--epochs", str(epochs), "--out", str(run), *extra])


def _one_line(capsys) -> str:
    """stderr without the progress bars' frames, checked to be one line."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not re.search(r"\d+/\d+ \[", x)]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_full_disk_keeps_the_last_save_and_resume_does_not_repeat_epochs(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    real = durable.write_file

    def write(path, data):  # the disk fills up right after epoch 2's metrics line
        lines = run / "metrics.jsonl"
        if lines.is_file() and len(lines.read_text().splitlines()) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(durable, "write_file", write)
    assert _train(run, epochs=2) == 2
    err = _one_line(capsys)
    assert (
        f"no space left on device while saving {run}: free space and run "
        f"`ddnn train --resume {run}`" in err
    )
    load_model(run)  # epoch 1's model, whole
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert _epochs(run) == [1, 2]
    assert not list(run.glob(".saving-*"))


def _edit_state(run: Path, change, *, rehash: bool) -> None:
    """Rewrite one tensor of the training state; rehash: keep train_state.json's hash true."""
    path = run / "train_state.safetensors"
    tensors = load(path.read_bytes())
    name = next(k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point())
    tensors[name] = change(tensors[name].clone())
    save_file(tensors, str(path))
    if rehash:
        doc = json.loads((run / "train_state.json").read_text())
        doc["sha256"] = durable.sha256_hex(path.read_bytes())
        (run / "train_state.json").write_text(json.dumps(doc))


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_header_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[12] ^= 0x01
    path.write_bytes(bytes(data))


def _drop_generator(run: Path) -> None:
    doc = json.loads((run / "train_state.json").read_text())
    del doc["info"]["generator"]
    (run / "train_state.json").write_text(json.dumps(doc))


DAMAGE = {
    "empty state tensors": ("train_state.safetensors", lambda r: (r / "train_state.safetensors")
                            .write_bytes(b"")),
    "cut state tensors": ("train_state.safetensors", lambda r: _cut(r / "train_state.safetensors")),
    "flipped header byte": ("train_state.safetensors",
                            lambda r: _flip_header_byte(r / "train_state.safetensors")),
    "huge weight": ("train_state.safetensors",
                    lambda r: _edit_state(r, lambda t: t.fill_(3.4e38), rehash=False)),
    "NaN weights with a true hash": ("NaN", lambda r: _edit_state(
        r, lambda t: t.fill_(float("nan")), rehash=True)),
    "cut state json": ("train_state.json", lambda r: _cut(r / "train_state.json")),
    "cut config": ("config.json", lambda r: _cut(r / "config.json")),
    "no generator": ("generator", _drop_generator),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_refuses_a_damaged_run_in_one_line_saying_what_to_do(
    damage, tiny_ddnn, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(tiny_ddnn, run)
    named, apply = DAMAGE[damage]
    apply(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = _one_line(capsys)
    assert named in err and "--overwrite" in err


def test_training_into_a_run_folder_needs_overwrite_which_clears_the_old_run(
    tiny_ddnn, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(tiny_ddnn, run)
    (run / "distributed.json").write_text("{}")
    assert _train(run) == 2
    assert "--overwrite" in _one_line(capsys)
    assert _epochs(run) == [1, 2]  # untouched
    assert _train(run, "--overwrite") == 0
    assert _epochs(run) == [1]
    assert not (run / "distributed.json").exists()


def test_ctrl_c_in_the_first_epoch_says_how_to_resume_and_resume_works(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert _train(run) == 130
    assert f"interrupted: run `ddnn train --resume {run}`" in _one_line(capsys)
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert _epochs(run) == [1]


def test_a_diverged_training_stops_without_saving_nan_weights(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, epoch: float("nan"))
    assert _train(run) == 2
    assert "diverged" in _one_line(capsys)
    assert not (run / "spec.json").exists() and not (run / "metrics.jsonl").exists()
