"""`ddnn bench table2` end to end: a tiny run on an emulated pi4 over ethernet-100, both
configurations, through the same `ddnn run` a user calls."""

from __future__ import annotations

import json
import os

import pytest

from ddnn.bench.emulated import _finished, link_at_rate, run_emulated
from ddnn.bench.table2 import bench_table2, table2_text
from ddnn.emulation.profiles import load_link_profile
from ddnn.runtime.config import DeploymentConfig
from ddnn.runtime.protocol import MODES
from ddnn.runtime.report import frames


def split_rows(folder):
    lines = (folder / "records-device+server.jsonl").read_text().splitlines()
    return frames(json.loads(x) for x in lines)


pytestmark = pytest.mark.integration


def test_a_link_at_another_rate_keeps_the_delay_and_reads_back(tmp_path):
    wifi = load_link_profile("wifi")
    slow = load_link_profile(link_at_rate(wifi, 0.5, tmp_path))
    assert slow.rate_mbit == 0.5 and slow.delay_ms == wifi.delay_ms
    assert slow.name == "wifi-at-0.5mbit"


def test_table2_times_both_configurations_on_the_emulation(tiny_ddnn, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and cgroups")
    result = bench_table2(
        [str(tiny_ddnn)], tmp_path, device_profile="pi4", link="ethernet-100", threshold=0.4,
        samples=6,
    )  # fmt: skip
    split, server_only = result.rows
    assert (split.configuration, server_only.configuration) == ("device+server", "server-only")
    assert split.samples == server_only.samples == 6
    # the device runs its section only in the split; server-only sends the raw 784-byte view
    assert split.mean_ms["device"] > 0 and server_only.mean_ms["device"] == 0
    assert server_only.bytes_per_sample > 784 and server_only.local is None
    assert split.local is not None and split.ideal >= split.overall
    for row in result.rows:
        parts = sum(row.mean_ms[t] for t in ("device", "comm", "server"))
        assert row.mean_ms["total"] == pytest.approx(parts, rel=0.05, abs=0.5)
    text = table2_text(result)
    assert "pi4 + ethernet-100, threshold 0.4" in text and "link ethernet-100" in text
    # the finished run is read back, not run again; another sample count would be run again
    folder = tmp_path / tiny_ddnn.name
    kwargs = {"device_profile": "pi4", "link": "ethernet-100", "threshold": 0.4, "reuse": True}
    again = run_emulated(tiny_ddnn, folder, samples=6, **kwargs)
    assert [len(again.rows[m]) for m in MODES] == [6, 6]
    assert again.rows["device+server"][0] == split_rows(folder)[0]
    config = DeploymentConfig(
        devices=1, samples=7, thresholds=(0.4,), device_profile="pi4", link="ethernet-100"
    )
    assert _finished(tiny_ddnn, folder, config) is None
