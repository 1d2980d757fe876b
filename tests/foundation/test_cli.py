import json

import pytest

from ddnn.cli import main


def test_train_evaluate_info_end_to_end(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert (
        main(["train", "ddnn", "--dataset", "synthetic", "--epochs", "1", "--out", str(run)]) == 0
    )
    capsys.readouterr()
    epoch_lines = [r for r in caplog.records if r.getMessage().startswith("epoch 1/1: loss")]
    assert [r.levelname for r in epoch_lines] == ["INFO"]  # shown without -v: one per epoch
    assert "validation accuracy device" in epoch_lines[0].getMessage()
    assert main(["evaluate", str(run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("local", "server", "overall", "ideal", "cloud_only"):
        assert key in rep["accuracy"]
    for key in ("local_exit_fraction", "bytes_per_sample", "raw_bytes_per_sample", "threshold"):
        assert key in rep
    assert main(["evaluate", str(run), "--threshold", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["local_exit_fraction"] == 0.0
    assert main(["evaluate", str(run), "--sweep", "--plot", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    assert "device0" in capsys.readouterr().out


def test_multiview_evaluation_has_the_missing_device_table(tiny_multiview, capsys):
    assert main(["evaluate", str(tiny_multiview), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    labels = [row["devices"] for row in rep["device_ablation"]]
    assert "without device 2" in labels and "device 0 alone" in labels
    assert "first 2 devices" in labels and "first 3 devices" in labels  # devices added in turn


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "/no/such/run"], "not a folder"),
        (["info", "/no/such/run"], "not a folder"),
        (["train", "nosuch"], "unknown preset"),
        (["train", "ddnn", "--dataset", "imagenet"], "unknown dataset"),
        (["train", "ddnn", "--dataset", "mnist"], "--data-dir"),
        (["evaluate", "/no/such/run", "--threshold", "1.5"], "--threshold 1.5 is outside [0, 1]"),
        (["evaluate", "/no/such/run", "--threshold", "-0.1"], "outside [0, 1]"),
        (["evaluate", "/no/such/run", "--threshold", "nan"], "outside [0, 1]"),
    ],
)
def test_errors_are_one_line_and_nonzero(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
