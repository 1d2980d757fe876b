import math

import pytest

from ddnn.bench.crossover import crossings, crossings_text, joined, log_rates


def test_log_rates_span_the_range_evenly_in_log_scale():
    assert log_rates(0.25, 100.0, 3) == [0.25, 5.0, 100.0]
    with pytest.raises(ValueError):
        log_rates(0.0, 1.0, 3)


def _curves(device_ms: float, split_bytes: float, raw_bytes: float):
    """T_total of the split and of server-only on a link of `rate` Mbit/s (bytes / rate)."""
    split = lambda rate: device_ms + split_bytes * 8 / (rate * 1e3)  # noqa: E731
    server = lambda rate: 1.0 + raw_bytes * 8 / (rate * 1e3)  # noqa: E731
    return split, server


def test_the_split_wins_below_the_rate_where_the_curves_cross():
    # 21 ms of device work vs 1 ms server; 500 vs 3000 bytes: 20 ms = 20000 bits / rate kbit
    split, server = _curves(21.0, 500.0, 3000.0)
    (c,) = crossings(split, server, 0.25, 100.0)
    assert c.rate_mbit == pytest.approx(1.0, rel=1e-6) and c.split_wins_below
    assert "1 Mbit/s: device+server wins below it" in crossings_text(split, server, 0.25, 100.0)


def test_no_crossing_in_the_range_names_the_configuration_that_wins_throughout():
    split, server = _curves(0.5, 10.0, 3000.0)
    assert crossings(split, server, 0.25, 100.0) == []
    assert crossings_text(split, server, 0.25, 100.0).endswith("device+server is faster throughout")
    split, server = _curves(500.0, 3000.0, 10.0)
    assert crossings_text(split, server, 0.25, 100.0).endswith("server-only is faster throughout")


def test_measured_points_are_joined_in_log_rate():
    curve = joined([10.0, 0.1, 1.0], [1.0, 5.0, 3.0])
    assert curve(1.0) == 3.0 and curve(0.01) == 5.0 and curve(100.0) == 1.0
    assert curve(math.sqrt(10.0)) == pytest.approx(2.0)
    (c,) = crossings(curve, lambda rate: 2.0, 0.1, 10.0)
    assert c.rate_mbit == pytest.approx(math.sqrt(10.0), rel=1e-6) and not c.split_wins_below
