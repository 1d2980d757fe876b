"""The planner's arithmetic on hand-computed numbers: mixture p95, T_comm, the threshold sweep,
budgets nobody meets."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ddnn.errors import DdnnError
from ddnn.planning.choose import Budgets, choose, pareto_front
from ddnn.planning.predict import (
    SERVER_ONLY,
    SPLIT,
    link_ms,
    mixture_quantile,
    predict,
    predict_all,
    weighted_quantile,
)
from ddnn.planning.records import RunProfile, ServerPath, ThresholdRow, Timing, WireBytes

# 1000 + 250 bytes on the wire: 10 000 bits; at 10 Mbit/s 1 ms, plus 2 x 5 ms of delay
WIRE = WireBytes(900, 940, 1000, 200, 220, 250)
RAW = WireBytes(1800, 1840, 1900, 200, 220, 250)  # 2150 B: 1.72 ms at 10 Mbit/s


def make_profile(**changes) -> RunProfile:
    fields = dict(
        run="/runs/a", model="a", model_id="x", host="h", device_profile={}, link_profile={},
        calibration={"host_gflops": 10.0}, slowdown=2.0, repeats=4, layers=(),
        device=Timing((1.0, 1.0, 1.0, 5.0)),  # mean 2
        server=Timing((2.0, 2.0, 2.0, 2.0)),
        server_only=Timing((3.0, 3.0, 3.0, 3.0)),
        exit_bytes={"device": 98, "cloud": 4608}, split_wire=WIRE, server_only_wire=RAW,
        thresholds=(
            ThresholdRow(0.0, 0.0, 0.90, 98.0),
            ThresholdRow(0.5, 0.75, 0.88, 24.5),
            ThresholdRow(1.0, 1.0, 0.70, 0.0),
        ),
        cloud_only_accuracy=0.91, validation_samples=100, device_ram_bytes=4096,
        device_flash_bytes=2048,
        # the server path with no link: the server's reply says all of it was its own work
        split_path=ServerPath(Timing((2.0,) * 4), Timing((2.0,) * 4)),
        server_only_path=ServerPath(Timing((3.0,) * 4), Timing((3.0,) * 4)),
    )  # fmt: skip
    return RunProfile(**(fields | changes))


LINK = SimpleNamespace(rate_mbit=10.0, delay_ms=5.0)


def test_the_link_time_is_the_round_trip_bytes_at_the_rate_plus_the_delay_twice():
    assert link_ms(WIRE, 10.0, 5.0) == pytest.approx(1.0 + 10.0)
    assert link_ms(WIRE, 100.0, 0.0) == pytest.approx(0.1)


def test_weighted_quantile_is_the_smallest_value_reaching_the_weight():
    values = np.array([3.0, 1.0, 2.0, 10.0])
    weights = np.array([0.25, 0.25, 0.25, 0.25])
    assert weighted_quantile(values, weights, 0.5) == 2.0
    assert weighted_quantile(values, weights, 0.95) == 10.0
    assert weighted_quantile(values, np.array([0.3, 0.3, 0.36, 0.04]), 0.95) == 3.0


def test_mixture_p95_is_not_a_sum_of_p95s():
    # 90 % of samples take 1 ms, 10 % take 100 ms: the p95 is 100 ms; with 96 % fast it is 1 ms
    assert mixture_quantile([(0.9, np.array([1.0])), (0.1, np.array([100.0]))], 0.95) == 100.0
    assert mixture_quantile([(0.96, np.array([1.0])), (0.04, np.array([100.0]))], 0.95) == 1.0
    assert mixture_quantile([(0.0, np.array([7.0])), (1.0, np.array([2.0, 4.0]))], 0.5) == 2.0


def test_a_threshold_prediction_mixes_local_and_offloaded_samples():
    p = predict(make_profile(), LINK, 0.5)  # a quarter of the samples are offloaded
    comm = 11.0
    assert p.mode == SPLIT and p.threshold == 0.5 and p.local_exit_fraction == 0.75
    assert p.t_device_ms.mean == pytest.approx(2.0)
    assert p.t_comm_ms.mean == pytest.approx(0.25 * comm)
    assert p.t_server_ms.mean == pytest.approx(0.25 * 2.0)
    assert p.t_total_ms.mean == pytest.approx(2.0 + 0.25 * (comm + 2.0))
    # offloaded totals: device {1,1,1,5} + 2 + 11 = {14 x 3, 18}, weight 0.25 / 16 a pair;
    # local: {1 x 3, 5}, 0.75 / 4 each. Sorted weights: 1 (0.5625), 5 (0.75), 14 (0.9375),
    # 18 (1.0): the p95 is 18 ms
    assert p.t_total_ms.p95 == pytest.approx(18.0)
    assert p.t_comm_ms.p95 == pytest.approx(comm)  # 25 % offloaded > 5 %: the tail is comm
    assert p.mqtt_bytes_per_sample == pytest.approx(0.25 * 940)
    assert p.frame_bytes_per_sample == pytest.approx(0.25 * 900)
    assert p.wire_bytes_per_sample == pytest.approx(0.25 * 1250)
    assert p.accuracy == 0.88 and p.device_ram_bytes == 4096


def test_when_almost_every_sample_exits_the_p95_is_the_device_time():
    profile = make_profile(thresholds=(ThresholdRow(0.5, 0.97, 0.8, 3.0),))
    p = predict(profile, LINK, 0.5)
    assert p.t_total_ms.p95 == pytest.approx(5.0)  # the parts' p95s would sum to 5 + 11 + 2
    assert p.t_comm_ms.p95 == 0.0 and p.t_server_ms.p95 == 0.0


def test_server_only_sends_the_raw_view_and_answers_at_the_final_exit():
    p = predict(make_profile(), LINK, None, mode=SERVER_ONLY)
    comm = 2150 * 8 / 10e6 * 1e3 + 10.0
    assert p.t_device_ms.mean == 0.0 and p.accuracy == 0.91
    assert p.t_total_ms.mean == pytest.approx(comm + 3.0)
    assert p.mqtt_bytes_per_sample == 1840


def test_the_sweep_predicts_every_threshold_then_server_only():
    preds = predict_all(make_profile(), 10.0, 5.0)
    assert [p.threshold for p in preds] == [0.0, 0.5, 1.0, None]
    assert [p.mqtt_bytes_per_sample for p in preds] == pytest.approx([940, 235, 0, 1840])
    assert preds[2].t_total_ms.mean == pytest.approx(2.0)  # all local: the device alone
    assert predict(make_profile(), LINK, 0.6).threshold == 0.5  # the nearest profiled one


def test_budgets_choose_the_most_accurate_design_that_meets_them():
    preds = predict_all(make_profile(), 10.0, 5.0)
    choice = choose(preds, Budgets(max_latency_ms=6.0))
    assert choice.recommended is not None and choice.recommended.threshold == 0.5
    assert choose(preds, Budgets()).recommended.mode == SERVER_ONLY  # 0.91, the best
    # T = 0 (15 ms, 0.90) loses to server-only (14.72 ms, 0.91) on both counts
    front = pareto_front(preds)
    assert [p.threshold for p in front] == [1.0, 0.5, None]


def test_a_budget_nothing_meets_is_an_answer_with_the_gap():
    preds = predict_all(make_profile(), 10.0, 5.0)
    choice = choose(preds, Budgets(max_latency_ms=1.0, min_accuracy=0.5))
    assert choice.recommended is None
    (miss,) = choice.misses
    assert miss.budget == "--max-latency-ms" and miss.best == pytest.approx(2.0)
    assert miss.by == pytest.approx(1.0)
    assert "missing it by 1 ms" in miss.text()
    # each budget alone is met, never together: the closest design's gaps
    both = choose(preds, Budgets(max_latency_ms=2.0, min_accuracy=0.9))
    assert both.recommended is None
    assert {m.budget for m in both.misses} <= {"--max-latency-ms", "--min-accuracy"}
    assert both.misses


def test_ram_budget_counts_the_c_export_and_server_only_needs_none():
    preds = predict_all(make_profile(), 10.0, 5.0)
    choice = choose(preds, Budgets(max_device_ram_kb=3.0))
    assert choice.recommended is not None and choice.recommended.mode == SERVER_ONLY
    unknown = predict_all(make_profile(device_ram_bytes=None), 10.0, 5.0)[:-1]
    (miss,) = choose(unknown, Budgets(max_device_ram_kb=3.0)).misses
    assert miss.best is None


def test_a_min_accuracy_given_in_percent_is_refused():
    with pytest.raises(DdnnError, match="fraction"):
        Budgets(min_accuracy=88)


def test_a_profile_round_trips_through_its_json():
    profile = make_profile()
    assert RunProfile.from_dict(profile.to_dict()) == profile


def test_the_server_path_replaces_the_layer_times_and_is_counted_once():
    # split: round trips {3, 5} ms of which the server's reply reports 1 ms each; link 11 ms.
    # An offload: 11 + 4 = 15 ms on average, T_server 1, T_comm 11 + (4 - 1) = 14; the
    # profile's layer time (server = 2 ms) is display only.
    # server-only: 2150 B at 10 Mbit/s = 1.72 ms + 10 ms delay; round trip 6 ms, server 4.5 ms
    profile = make_profile(
        split_path=ServerPath(Timing((3.0, 5.0)), Timing((1.0, 1.0))),
        server_only_path=ServerPath(Timing((6.0,)), Timing((4.5,))),
    )
    split = predict(profile, LINK, 0.5)  # a quarter offloaded
    assert split.t_server_ms.mean == pytest.approx(0.25 * 1.0)
    assert split.t_comm_ms.mean == pytest.approx(0.25 * 14.0)
    assert split.t_total_ms.mean == pytest.approx(2.0 + 0.25 * 15.0)
    assert split.t_total_ms.mean == pytest.approx(
        split.t_device_ms.mean + split.t_comm_ms.mean + split.t_server_ms.mean
    )
    # offloaded totals: device {1,1,1,5} + {3,5} + 11 = {15 x 3, 17 x 3, 19, 21}, 0.25 / 8
    # each; local {1 x 3, 5}, 0.75 / 4 each. Cumulative: 1 0.5625, 5 0.75, 15 0.84375,
    # 17 0.9375, 19 0.96875: the p95 is 19 ms
    assert split.t_total_ms.p95 == pytest.approx(19.0)
    assert split.t_comm_ms.p95 == pytest.approx(15.0)  # per request: 11 + 5 - 1
    only = predict(profile, LINK, None, SERVER_ONLY)
    assert only.t_server_ms.mean == pytest.approx(4.5)
    assert only.t_comm_ms.mean == pytest.approx(11.72 + 1.5)
    assert only.t_total_ms.mean == pytest.approx(17.72)


def test_a_profile_without_a_server_path_asks_to_measure_again():
    with pytest.raises(DdnnError, match="--remeasure"):
        predict(make_profile(server_only_path=ServerPath()), LINK, None, SERVER_ONLY)


def test_a_path_measured_through_one_link_predicts_another_by_swapping_its_arithmetic():
    # measured through a link whose arithmetic is 11.72 ms: round trip 19.22 ms, server 4.5.
    # Predicted for that link: the round trip as measured; for a link with 0.5 ms more delay
    # each way, 1 ms more; T_comm is the rest of the round trip past T_server in both.
    only = ServerPath(Timing((19.22,)), Timing((4.5,)), link_ms=11.72)
    profile = make_profile(server_only_path=only)
    same = predict(profile, LINK, None, SERVER_ONLY)
    assert same.t_total_ms.mean == pytest.approx(19.22)
    assert same.t_comm_ms.mean == pytest.approx(19.22 - 4.5)
    slower = predict(profile, SimpleNamespace(rate_mbit=10.0, delay_ms=5.5), None, SERVER_ONLY)
    assert slower.t_total_ms.mean == pytest.approx(20.22)
    assert slower.t_server_ms.mean == pytest.approx(4.5)
