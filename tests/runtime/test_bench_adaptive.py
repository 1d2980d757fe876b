"""`ddnn bench adaptive`: the per-phase figures, the target's verdicts and the table (pure, on
hand-made records), and one short run of the whole experiment on a real Mosquitto."""

from __future__ import annotations

import json

import pytest

from ddnn.bench.adaptive.experiment import StreamSetup
from ddnn.bench.adaptive.phases import (
    Phase,
    boundaries,
    phase_rows,
    phase_table,
    split,
    timeline,
    verdict_lines,
    verdicts,
)
from ddnn.errors import DdnnError

BUDGET = 30.0
PHASES = [Phase("calm", 10), Phase("slow link", 20, True), Phase("calm again", 10)]


def record(frame: int, total_ms: float, *, right: bool = True, local: bool = True,
           threshold: float = 0.4, device_ms: float = 1.0, status: str = "ok") -> dict:  # fmt: skip
    """One device record as `ddnn device --records` writes it."""
    return {
        "device": "dev0", "frame_id": frame, "label": 3, "predicted": 3 if right else 5,
        "local_predicted": 3, "exit_index": 0 if local else 1, "offloaded": not local,
        "status": status, "device_ms": device_ms, "comm_ms": 0.0, "server_ms": 0.0,
        "total_ms": total_ms, "frame_bytes": 0 if local else 154, "packet_bytes": 0,
        "threshold": threshold,
    }  # fmt: skip


def stream_of(slow_ms: float, *, slow_every: int, wrong_calm_again: int = 0) -> list[dict]:
    """40 samples: calm (fast offloads), disturbed (every `slow_every`-th offload is slow),
    calm again (the first `wrong_calm_again` answered wrongly)."""
    recs = [record(i, 5.0, local=i % 2 == 0) for i in range(10)]
    recs += [
        record(10 + i, slow_ms if i % slow_every == 0 else 1.0, local=i % slow_every != 0,
               threshold=0.4 + 0.1 * (i // 10))
        for i in range(20)
    ]  # fmt: skip
    recs += [record(30 + i, 5.0, right=i >= wrong_calm_again) for i in range(10)]
    return recs[::-1]  # written out of order: phases follow the stream, not the file


def test_phases_cut_the_stream_at_sample_positions():
    assert boundaries(PHASES) == [10, 30]
    parts = split(stream_of(80.0, slow_every=2), PHASES)
    assert [len(p) for p in parts] == [10, 20, 10]
    assert [r["frame_id"] for r in parts[1]] == list(range(10, 30))
    with pytest.raises(DdnnError, match="at least one sample"):
        boundaries([Phase("calm", 0)])


def test_each_phase_gets_its_p95_accuracy_local_exit_and_threshold():
    rows = phase_rows("adaptive", stream_of(80.0, slow_every=2, wrong_calm_again=2), PHASES)
    calm, slow, again = rows
    assert calm.samples == 10 and calm.p95_total_ms == 5.0 and calm.local_exit == 0.5
    assert slow.p95_total_ms == 80.0 and slow.local_exit == 0.5 and slow.disturbed
    assert slow.threshold_median == pytest.approx(0.45) and slow.threshold_max == pytest.approx(0.5)
    assert again.accuracy == pytest.approx(0.8) and calm.accuracy == 1.0
    assert calm.p95_device_ms == 1.0
    settled = phase_rows("adaptive", stream_of(80.0, slow_every=20), PHASES)[1]
    assert settled.p95_total_ms > 1.0 and settled.p95_settled_ms == 1.0  # the slow one: first


def test_the_target_is_checked_phase_by_phase_with_the_miss_stated():
    static = phase_rows("static", stream_of(80.0, slow_every=2), PHASES)
    adaptive = phase_rows("adaptive", stream_of(80.0, slow_every=10, wrong_calm_again=1), PHASES)
    found = {(v.phase, v.target): v for v in verdicts(static, adaptive, BUDGET)}
    assert found["calm", "p95 T_total <= budget"].met is True
    slow = found["slow link", "p95 T_total <= budget"]  # 2 slow of 20: p95 is a slow one
    assert slow.met is False and "50.0 ms over" in slow.detail
    assert ("slow link", "accuracy within 0.5 point") not in found  # only calm phases
    again = found["calm again", "accuracy within 0.5 point"]
    assert again.met is False and "-10.00 points" in again.detail
    assert found["calm", "accuracy within 0.5 point"].met is True
    text = verdict_lines(list(found.values()))
    assert "- slow link: p95 T_total <= budget: MISSED (80.0 ms, 50.0 ms over)" in text


def test_a_phase_where_the_device_alone_is_over_budget_is_not_held_against_it():
    recs = [record(i, 50.0, device_ms=45.0) for i in range(40)]
    rows = phase_rows("adaptive", recs, PHASES)
    found = verdicts(phase_rows("static", recs, PHASES), rows, BUDGET)
    budget = [v for v in found if v.target.startswith("p95")]
    assert all(v.met is None and "device alone takes 45.0 ms" in v.detail for v in budget)


def test_the_timeline_says_how_fast_the_threshold_rose_and_came_back():
    thresholds = [0.4] * 5 + [0.45, 0.5, 0.5, 0.45] + [0.4] * 3  # one sample every second
    recs = [{**record(i, 1.0, threshold=t), "t_s": float(i)} for i, t in enumerate(thresholds)]
    moved = timeline(recs, apply_s=3.0, restore_s=7.5)
    assert [r.seconds for r in phase_rows("adaptive", recs, PHASES[:1])] == [11.0]
    assert (moved.first_raise_s, moved.peak, moved.peak_s) == (2.0, 0.5, 3.0)
    assert moved.back_s == 1.5  # t = 9
    assert timeline(recs[:8], apply_s=3.0, restore_s=7.5).back_s is None  # never came back
    flat = [{**r, "threshold": 0.4} for r in recs]
    assert timeline(flat, apply_s=3.0, restore_s=7.5).back_s == 0.0


def test_the_table_lists_both_runs_phase_by_phase():
    rows = phase_rows("adaptive", stream_of(80.0, slow_every=10), PHASES)
    rows += phase_rows("static", stream_of(80.0, slow_every=2), PHASES)
    lines = phase_table(rows).splitlines()
    assert lines[0].startswith("| phase | run | samples | seconds | T_total p50 / p95 ms |")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["static", "adaptive"] * 3
    slow = "| slow link (disturbed) | static | 20 | - | 40.5 / 80.0 | 80.0 | 1.0000 | 0.5000 | 0 |"
    assert lines[4].startswith(slow) and lines[4].endswith("| 0.45 (max 0.50) |")
    assert lines[2].endswith("| 0.40 |")  # one threshold: no max


def test_bad_setups_get_one_line():
    with pytest.raises(DdnnError, match="three sample counts"):
        StreamSetup(budget_ms=30, deadline_ms=100, rate=100, phases=(10, 0, 10))
    with pytest.raises(DdnnError, match="must be positive"):
        StreamSetup(budget_ms=0, deadline_ms=100, rate=100, phases=(10, 10, 10))


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_overload_run_on_mosquitto(tiny_ddnn, tmp_path):
    """Both streams through real `ddnn device` / `ddnn serve` processes, extra load switched on
    and off at the phase boundaries: every sample recorded once, in its phase, both runs."""
    from ddnn.bench.adaptive.run import bench_adaptive

    setup = StreamSetup(budget_ms=30, deadline_ms=100, rate=200, phases=(40, 60, 40))
    report = bench_adaptive(
        str(tiny_ddnn), tmp_path, setup, scenario="server", load=(2, 50.0), workers=1
    )
    assert [r["samples"] for r in report["rows"]] == [40, 60, 40] * 2
    assert [s["action"] for s in report["switches"]["adaptive"]] == ["apply", "restore"]
    assert all(40 <= s[0]["sample"] <= 45 for s in report["switches"].values())
    lines = (tmp_path / "records-adaptive.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["frame_id"] for x in lines) == list(range(140))
    assert (tmp_path / "adaptive.png").stat().st_size > 0
    assert "Target (adaptive run)" in (tmp_path / "report.md").read_text()
