"""The host's calibration: its best speed, cached per host so a profile and a run share it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ddnn.emulation import calibrate as cal


def test_the_best_speed_is_at_least_the_median_speed():
    found = cal.calibrate(repeats=9)
    assert found.host_gflops >= found.median_gflops > 0 and found.spread >= 0
    assert found.host and found.source == "measured"


def test_a_fresh_cached_calibration_is_reused_and_a_stale_one_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv(cal.CACHE_ENV, str(tmp_path))
    calls = []

    def fake(repeats: int = cal.REPEATS) -> cal.Calibration:
        calls.append(repeats)
        now = datetime.now(UTC) - timedelta(hours=2 * len(calls) - 2)  # 0 h, then 2 h old...
        return cal.Calibration(
            100.0 + len(calls), measured_at=now.isoformat(), host=cal.platform.node()
        )

    monkeypatch.setattr(cal, "calibrate", fake)
    first = cal.host_calibration()
    assert first.host_gflops == 101.0 and first.source == "measured" and cal.cache_path().is_file()
    again = cal.host_calibration()  # a second process would read the same file
    assert again.host_gflops == 101.0 and again.source == str(cal.cache_path()) and len(calls) == 1
    assert cal.host_calibration(remeasure=True).host_gflops == 102.0  # --recalibrate
    assert cal.host_calibration(max_age_s=3600).host_gflops == 103.0  # the 102 one is 2 h old
