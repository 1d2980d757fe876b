"""`ddnn bench load` end to end on a tiny model: real Mosquitto, `ddnn serve` and a generator
process; every request is accounted for exactly once."""

from __future__ import annotations

import json

import pytest

from ddnn.bench.load import bench_load, bench_load_text
from ddnn.cli import main

pytestmark = pytest.mark.integration


def test_light_load_is_held_and_every_request_accounted_for(tiny_ddnn, broker):
    r = bench_load(str(tiny_ddnn), devices=[2], rates=[20], seconds=2, broker=broker.url)
    assert r["model"] == "ddnn" and r["deadline_ms"] == 2000 and r["skipped"] == []
    (step,) = r["steps"]
    assert (step["devices"], step["rate_per_device"], step["offered_per_s"]) == (2, 20, 40)
    assert step["scheduled"] == 2 * 20 * 2
    assert step["ok"] + step["shed"] + step["errors"] + step["lost"] == step["scheduled"]
    assert step["sent"] + step["send_errors"] == step["scheduled"]
    assert step["lost"] == 0 and step["late"] == 0
    assert step["server_received"] == step["sent"]  # the server saw every request once
    assert step["server_counters"]["ddnn_replies_total"] == step["ok"]
    assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"] < r["deadline_ms"]
    assert step["achieved_send_per_s"] == pytest.approx(40, rel=0.1)
    assert step["server_rss_mb"]["start"] > 0 and step["server_rss_mb"]["end"] > 0
    assert step["verdict"] == "held"
    assert r["best"]["offered_per_s"] == 40
    text = bench_load_text(r)
    assert "| 2 | 20 | 40 |" in text and "highest load held" in text


def test_cli_json_and_skipping_heavier_steps(tiny_ddnn, broker, capsys):
    # a 1 ms deadline cannot be met: the first step fails and the heavier one is skipped
    args = ["bench", "load", str(tiny_ddnn), "--devices", "1", "--rate", "10", "20",
            "--seconds", "0.5", "--deadline-ms", "1", "--broker", broker.url, "--json"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    (step,) = r["steps"]
    assert step["verdict"] == "overloaded" and step["lost"] > 0
    assert step["ok"] + step["shed"] + step["errors"] + step["lost"] == step["scheduled"] == 5
    assert r["skipped"] == [{"devices": 1, "rate_per_device": 20.0, "after": [1, 10.0]}]
    assert r["best"] is None
