import numpy as np
import pytest

from ddnn.evaluate.communication import CommCosts
from ddnn.evaluate.metrics import report
from ddnn.evaluate.policy import ExitOutputs

C = 7


def logits(pred: int, confident: bool) -> np.ndarray:
    row = np.zeros(C, dtype=np.float32)
    row[pred] = 20.0 if confident else 0.5
    return row


def hand_made() -> ExitOutputs:
    labels = np.arange(7)
    # sample: (device prediction, device confident, cloud prediction)
    cases = [
        (0, True, 6),  # a: exits locally, right; cloud would be wrong
        (0, True, 1),  # b: exits locally, wrong; cloud would be right
        (0, False, 2),  # c: goes up, device wrong, cloud right
        (3, False, 0),  # d: goes up, device right, cloud wrong
        (0, False, 0),  # e: goes up, both wrong
        (0, False, 5),  # f: goes up, device wrong, cloud right
        (0, False, 0),  # g: goes up, both wrong
    ]
    device = np.stack([logits(p, conf) for p, conf, _ in cases])
    cloud = np.stack([logits(c, True) for _, _, c in cases])
    return ExitOutputs(
        names=["device", "cloud"],
        logits=[device, cloud],
        labels=labels,
        class_maps=[None, None],
        devices_present=np.ones(7, dtype=np.int64),
    )


def test_local_server_overall_ideal_all_differ_and_match_hand_counts():
    costs = CommCosts(devices=1, score_bytes=0, uplink_bytes=98, raw_bytes=784, edge_bytes=0)
    rep = report(hand_made(), [0.5], costs, has_local_exit=True)
    acc = rep["accuracy"]
    assert acc["local"] == pytest.approx(2 / 7)  # a, d
    assert acc["server"] == pytest.approx(2 / 5)  # c, f among c d e f g
    assert acc["overall"] == pytest.approx(3 / 7)  # a, c, f
    assert acc["ideal"] == pytest.approx(5 / 7)  # a, b, c, d, f
    assert acc["cloud_only"] == pytest.approx(3 / 7)  # b, c, f
    assert len({acc["local"], acc["server"], acc["overall"], acc["ideal"]}) == 4
    assert rep["local_exit_fraction"] == pytest.approx(2 / 7)
    assert rep["bytes_per_sample"] == pytest.approx(5 / 7 * 98)
    assert rep["raw_bytes_per_sample"] == 784
    assert rep["exits"]["device"]["accuracy_taken"] == pytest.approx(1 / 2)


def test_scores_to_an_off_device_aggregator_are_paid_by_every_sample():
    costs = CommCosts(devices=4, score_bytes=28, uplink_bytes=50, raw_bytes=400, edge_bytes=0)
    out = hand_made()
    out.devices_present = np.full(7, 4)
    rep = report(out, [0.5], costs, has_local_exit=True)
    assert rep["bytes_per_sample"] == pytest.approx(4 * 28 + 5 / 7 * 4 * 50)
    assert rep["raw_bytes_per_sample"] == 1600


def test_threshold_zero_sends_everything_up():
    costs = CommCosts(devices=1, score_bytes=0, uplink_bytes=98, raw_bytes=784, edge_bytes=0)
    rep = report(hand_made(), [0.0], costs, has_local_exit=True)
    assert rep["local_exit_fraction"] == 0.0
    assert rep["accuracy"]["overall"] == rep["accuracy"]["cloud_only"]
    assert rep["bytes_per_sample"] == 98
