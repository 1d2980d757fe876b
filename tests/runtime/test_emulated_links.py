"""Emulated links on a real Mosquitto: an MQTT round trip through each shipped link profile
takes twice its one-way delay plus the message's serialization each way (also on a slow link,
where a 1.5 KB message's serialization dominates), and `set_link` changes that live."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from ddnn.bench.links import expected_rtt_ms, median_rtt_ms
from ddnn.emulation.profiles import link_profile_names, load_link_profile
from ddnn.emulation.session import EmulatedDevices
from ddnn.runtime.broker import parse_broker_url

# Tolerance. The relay never releases a chunk early, so the round trip is at least
# 2 x (delay + serialization) (less 0.5 ms for timer rounding). Above it: the broker's own round
# trip on loopback (about 0.3 ms), the relay's read-timer-write twice each way, and the
# scheduling of three processes on a shared 2-core machine: 4 ms, plus 10 % for timer lateness
# growing with the hold.
SLACK_MS, SLACK_FRACTION = 4.0, 0.10


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and cgroups")


def _median_rtt(emu: EmulatedDevices, size: int = 100) -> float:
    return median_rtt_ms(emu, 0, count=15, size=size)


def _within(measured: float, expected: float) -> bool:
    return expected - 0.5 <= measured <= expected * (1 + SLACK_FRACTION) + SLACK_MS


@pytest.mark.integration
@pytest.mark.parametrize("name", link_profile_names())
def test_an_mqtt_round_trip_through_a_link_takes_twice_its_one_way_delay(broker, name):
    _needs_root()
    link = load_link_profile(name)
    with EmulatedDevices(1, broker=parse_broker_url(broker.url), link=link) as emu:
        rtt = _median_rtt(emu)
    expected = expected_rtt_ms(link)
    assert _within(rtt, expected), f"{name}: {rtt:.2f} ms, profile says {expected:.2f}"


@pytest.mark.integration
def test_a_round_trip_on_a_slow_link_pays_each_messages_serialization(broker):
    """1.5 KB each way at 0.25 Mbit/s: 2 x (2 ms + 52 ms), which tbf's 6 KB burst alone let
    through in about 4 ms."""
    _needs_root()
    link = replace(load_link_profile("wifi"), rate_mbit=0.25)
    with EmulatedDevices(1, broker=parse_broker_url(broker.url), link=link) as emu:
        rtt = _median_rtt(emu, size=1500)
    expected = expected_rtt_ms(link, 1500)
    assert expected > 100
    assert _within(rtt, expected), f"{rtt:.2f} ms, link says {expected:.2f}"


@pytest.mark.integration
def test_set_link_changes_the_delay_live(broker):
    _needs_root()
    link = load_link_profile("wifi")
    with EmulatedDevices(1, broker=parse_broker_url(broker.url), link=link) as emu:
        before = _median_rtt(emu)
        emu.set_link(delay_ms=30.0)
        after = _median_rtt(emu)
    assert _within(before, expected_rtt_ms(link)), before
    assert _within(after, expected_rtt_ms(replace(link, delay_ms=30.0))), after
