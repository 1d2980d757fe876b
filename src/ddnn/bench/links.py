"""`ddnn bench links`: the host's calibration, and the MQTT round trip through each emulated link
profile on a real Mosquitto against what the profile says (2 x its one-way delay plus the
message's serialization each way)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from ddnn.bench.ping import SIZE, TOPIC
from ddnn.emulation.calibrate import calibrate
from ddnn.emulation.profiles import LinkProfile, link_profile_names, load_link_profile
from ddnn.emulation.session import EmulatedDevices
from ddnn.emulation.tcpip import serialization_s
from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, parse_broker_url
from ddnn.runtime.transport import publish_packet_size
from ddnn.tables import markdown_table

WARM_UP = 3  # the first round trips include paho's and the relay's first-use costs


def expected_rtt_ms(link: LinkProfile, size: int = SIZE) -> float:
    """What the link says a ping of `size` bytes takes: the one-way delay and the PUBLISH
    packet's serialization (with its TCP/IP headers), up to the broker and back. The packet
    size is the v5 QoS-1 one: 3 bytes over the QoS-0 ping's (no packet id, no properties)."""
    packet = publish_packet_size(TOPIC, size)
    return 2 * (link.delay_ms + serialization_s(packet, link.rate_mbit * 1e6) * 1000)


def median_rtt_ms(emu: EmulatedDevices, device: int, count: int = 40, size: int = SIZE) -> float:
    """Median MQTT round trip, in ms, from inside emulated device `device`."""
    return statistics.median(rtts_ms(emu, device, count, size))


def rtts_ms(emu: EmulatedDevices, device: int, count: int, size: int = SIZE) -> list[float]:
    """`count` round trips (less the warm-up) by `python -m ddnn.bench.ping` inside the device,
    each a message of `size` bytes."""
    argv = [sys.executable, "-m", "ddnn.bench.ping", emu.broker_url(device), str(count + WARM_UP),
            str(size)]  # fmt: skip
    proc = emu.popen(device, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60 + count * 5)
    if proc.returncode != 0:
        raise DdnnError(f"the ping inside the emulated device failed: {err.strip()[-500:]}")
    return [float(x) for x in json.loads(out)][WARM_UP:]


def bench_links(links: list[str] | None = None, count: int = 40) -> dict[str, Any]:
    """Calibrate, then ping through each link (all shipped ones by default)."""
    result: dict[str, Any] = {"calibration": calibrate().to_dict(), "links": []}
    with MosquittoBroker() as broker:
        target = parse_broker_url(broker.url)
        for name in links or link_profile_names():
            link = load_link_profile(name)
            with EmulatedDevices(1, broker=target, link=link) as emu:
                rtts = rtts_ms(emu, 0, count)
            deciles = statistics.quantiles(rtts, n=20)
            result["links"].append({
                "link": link.name, "rate_mbit": link.rate_mbit,
                "expected_ms": expected_rtt_ms(link),
                "median_ms": statistics.median(rtts), "p5_ms": deciles[0],
                "p95_ms": deciles[-1], "count": len(rtts),
            })  # fmt: skip
    return result


def bench_links_text(result: dict[str, Any]) -> str:
    cal = result["calibration"]
    head = (
        f"calibration: {cal['host_gflops']:.1f} GFLOPS on {cal['workload']} "
        f"(spread {cal['spread'] * 100:.0f} %)\n\nMQTT round trip, QoS 0, {SIZE} bytes, through "
        "each emulated link:\n\n"
    )
    headers = ("link", "rate Mbit/s", "expected ms (2 x (delay + serialization))", "median ms",
               "p5 ms", "p95 ms",
               "median - expected")  # fmt: skip
    rows = [
        [r["link"], r["rate_mbit"], r["expected_ms"], r["median_ms"], r["p5_ms"], r["p95_ms"],
         r["median_ms"] - r["expected_ms"]]
        for r in result["links"]
    ]  # fmt: skip
    return head + markdown_table(headers, rows)
