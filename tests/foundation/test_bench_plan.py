from types import SimpleNamespace

import pytest

from ddnn.bench.plan import (
    PlanBench,
    bench_plan_text,
    check_designs,
    design_name,
    pick_designs,
    predicted_figures,
)


def _pred(run: str, mode: str, threshold, mean: float, accuracy: float = 0.9):
    stat = SimpleNamespace(mean=mean, p95=2 * mean)
    return SimpleNamespace(
        run=f"/runs/{run}", mode=mode, threshold=threshold, t_total_ms=stat,
        mqtt_bytes_per_sample=100.0, accuracy=accuracy,
    )  # fmt: skip


A1 = _pred("a", "device+server", 0.2, 10.0, 0.85)
A2 = _pred("a", "device+server", 0.4, 12.0, 0.88)
A3 = _pred("a", "device+server", 0.6, 15.0, 0.89)
AS = _pred("a", "server-only", None, 30.0, 0.90)
B1 = _pred("b", "device+server", 0.4, 5.0, 0.80)
ALL = [A1, A2, A3, AS, B1]


def test_a_design_is_named_by_run_mode_and_threshold():
    assert design_name(A2) == "a device+server T=0.4"
    assert design_name(AS) == "a server-only"


def test_the_recommendation_comes_first_then_the_front_extremes():
    picked = pick_designs(ALL, recommended=A2, front=[B1, A1, A3, AS])
    assert picked == [A2, B1, AS]


def test_designs_are_never_picked_twice_and_other_runs_and_modes_fill_in():
    picked = pick_designs(ALL, recommended=A2, front=[A2], n=3)
    assert picked[0] is A2 and len({design_name(p) for p in picked}) == 3
    assert {p.mode for p in picked} == {"device+server", "server-only"}
    assert "b device+server T=0.4" in {design_name(p) for p in picked}


def test_without_a_recommendation_the_front_extremes_are_checked():
    assert pick_designs(ALL, recommended=None, front=[B1, A3], n=2) == [B1, A3]


def test_each_design_is_run_once_and_compared_with_its_prediction():
    ran = []

    def measure(p):
        ran.append(design_name(p))
        return [
            {"total_ms": 10.0, "packet_bytes": 100, "predicted": 1, "label": 1},
            {"total_ms": 14.0, "packet_bytes": 100, "predicted": 1, "label": 2},
        ]

    checks = check_designs([A2, AS], measure)
    assert ran == ["a device+server T=0.4", "a server-only"]
    assert checks[0].predicted == predicted_figures(A2)
    assert checks[0].measured.mean_total_ms == 12.0 and checks[0].measured.accuracy == 0.5
    assert checks[0].time_error == pytest.approx(0.0) and checks[1].threshold is None
    result = PlanBench("pi3", "wifi", "a device+server T=0.4", tuple(checks), {})
    text = bench_plan_text(result)
    assert "recommended: a device+server T=0.4" in text and "accuracy off by +38.0 points" in text
    assert result.to_dict()["checks"][1]["misses"]  # server-only: 30 ms predicted, 12 measured
