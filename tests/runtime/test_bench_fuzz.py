"""`ddnn bench fuzz` in miniature: the shared decoder properties and a live server on memory://
that answers every malformed message it can address and keeps serving."""

from __future__ import annotations

import json

import pytest

from ddnn.bench.fuzz import PROPERTIES, bench_fuzz, bench_fuzz_text
from ddnn.cli import main
from ddnn.errors import DdnnError
from ddnn.runtime.broker import find_mosquitto


def test_bench_fuzz_counts_add_up_and_nothing_escapes(tiny_ddnn):
    r = bench_fuzz(60, str(tiny_ddnn), live=150, seed=3)
    assert r["ok"], bench_fuzz_text(r)
    assert [p["property"] for p in r["properties"]] == list(PROPERTIES)
    for p in r["properties"]:
        assert p["tried"] > 0 and p["escaped"] == 0 and p["violations"] == 0
        assert p["rejected"] + p["accepted"] == p["tried"]
    assert r["properties"][1]["accepted"] == 0  # random bytes never pass as a frame
    live = r["live"]
    assert live["tried"] == 150 == sum(live["by_category"].values())
    assert all(n > 0 for n in live["by_category"].values())
    answered = live["rejected"] + live["accepted"]
    assert answered + live["unanswerable"] + live["duplicates_dropped"] == live["tried"]
    assert live["codes"].get("MALFORMED", 0) > 0 and live["escaped"] == 0
    assert live["probes_failed"] == 0 and live["probes_ok"] >= 1 and live["server_healthy"]
    assert "| messages tried |" in bench_fuzz_text(r)


def test_cli_without_a_model_fuzzes_the_decoder_only(capsys):
    assert main(["bench", "fuzz", "--examples", "20", "--seed", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["live"] is None and len(r["properties"]) == 4


@pytest.mark.integration
def test_the_live_fuzz_passes_through_a_real_broker_with_each_client(tiny_ddnn, mqtt_client):
    try:
        find_mosquitto()
    except DdnnError as exc:
        pytest.skip(str(exc))
    r = bench_fuzz(10, str(tiny_ddnn), live=100, seed=5, mqtt_client=mqtt_client)
    assert r["ok"], bench_fuzz_text(r)
    live = r["live"]
    assert live["tried"] == 100 and live["escaped"] == 0 and live["server_healthy"]
    assert live["probes_failed"] == 0 and live["probes_ok"] >= 1
    assert f"Mosquitto via {mqtt_client}" in bench_fuzz_text(r)
