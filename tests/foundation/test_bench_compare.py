import math

import pytest

from ddnn.bench.compare import (
    Check,
    Figures,
    comparison_table,
    measured_figures,
    misses_text,
    relative_error,
)


def _check(pred: Figures, meas: Figures) -> Check:
    return Check("d1", 0.4, pred, meas, samples=100)


MEASURED = Figures(mean_total_ms=100.0, p95_total_ms=150.0, bytes_per_sample=200.0, accuracy=0.90)


def test_relative_error_is_taken_against_the_measured_value():
    assert relative_error(115.0, 100.0) == pytest.approx(0.15)
    assert relative_error(85.0, 100.0) == pytest.approx(-0.15)
    assert relative_error(0.0, 0.0) == 0.0
    assert math.isinf(relative_error(1.0, 0.0))


def test_a_prediction_inside_every_target_misses_nothing():
    pred = Figures(mean_total_ms=114.0, p95_total_ms=300.0, bytes_per_sample=209.0, accuracy=0.905)
    check = _check(pred, MEASURED)
    assert check.time_error == pytest.approx(0.14)
    assert check.bytes_error == pytest.approx(0.045)
    assert check.accuracy_points == pytest.approx(0.5)
    assert check.misses == []  # p95 has no target: it is shown, not judged
    assert misses_text([check]) == ""


def test_each_missed_target_is_named_with_how_far_off_it_is():
    pred = Figures(mean_total_ms=80.0, p95_total_ms=150.0, bytes_per_sample=220.0, accuracy=0.88)
    misses = _check(pred, MEASURED).misses
    assert misses == [
        "mean T_total off by -20.0 % (target 15%)",
        "bytes off by +10.0 % (target 5%)",
        "accuracy off by -2.0 points (target 1)",
    ]
    assert misses_text([_check(pred, MEASURED)]).splitlines()[0].startswith("d1: mean T_total")


def test_accuracy_is_compared_in_points_not_relative():
    # 0.90 vs 0.885 is 1.7 % relative but 1.5 points: a miss
    pred = Figures(mean_total_ms=100.0, p95_total_ms=150.0, bytes_per_sample=200.0, accuracy=0.885)
    assert _check(pred, MEASURED).misses == ["accuracy off by -1.5 points (target 1)"]


def test_the_table_shows_both_sides_and_the_errors_in_one_row_per_design():
    pred = Figures(mean_total_ms=110.0, p95_total_ms=165.0, bytes_per_sample=200.0, accuracy=0.9)
    table = comparison_table([_check(pred, MEASURED), _check(MEASURED, MEASURED)])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| design | threshold | samples |")
    assert "110.00 / 100.00 | +10.0 %" in lines[2] and "165.00 / 150.00 | +10.0 %" in lines[2]
    assert "90.0 / 90.0 | +0.0 | 3.0 | met |" in lines[2]  # SE: sqrt(0.9 x 0.1 / 100 samples)


def test_measured_figures_come_from_the_deployment_rows():
    rows = [
        {"total_ms": 10.0, "packet_bytes": 0, "frame_bytes": 0, "predicted": 3, "label": 3},
        {"total_ms": 30.0, "packet_bytes": 100, "frame_bytes": 90, "predicted": 1, "label": 2},
    ]
    assert measured_figures(rows, bytes_field="frame_bytes").bytes_per_sample == 45.0
    f = measured_figures(rows)
    assert f.mean_total_ms == 20.0 and f.bytes_per_sample == 50.0 and f.accuracy == 0.5
    assert f.p95_total_ms == pytest.approx(29.0)
    with pytest.raises(ValueError):
        measured_figures([])
