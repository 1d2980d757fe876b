"""`ddnn bench links`: the host's calibration, and the MQTT round trip through each emulated link
profile on a real Mosquitto against what the profile says (2 x its one-way delay)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from ddnn.emulation.calibrate import calibrate
from ddnn.emulation.profiles import link_profile_names, load_link_profile
from ddnn.emulation.session import EmulatedDevices
from ddnn.errors import DdnnError
from ddnn.runtime.broker import MosquittoBroker, parse_broker_url
from ddnn.tables import markdown_table

WARM_UP = 3  # the first round trips include paho's and the relay's first-use costs


def median_rtt_ms(emu: EmulatedDevices, device: int, count: int = 40) -> float:
    """Median MQTT round trip, in ms, from inside emulated device `device`."""
    return statistics.median(rtts_ms(emu, device, count))


def rtts_ms(emu: EmulatedDevices, device: int, count: int) -> list[float]:
    """`count` round trips (less the warm-up) by `python -m ddnn.bench.ping` inside the device."""
    argv = [sys.executable, "-m", "ddnn.bench.ping", emu.broker_url(device), str(count + WARM_UP)]
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
                "link": link.name, "rate_mbit": link.rate_mbit, "expected_ms": 2 * link.delay_ms,
                "median_ms": statistics.median(rtts), "p5_ms": deciles[0],
                "p95_ms": deciles[-1], "count": len(rtts),
            })  # fmt: skip
    return result


def bench_links_text(result: dict[str, Any]) -> str:
    cal = result["calibration"]
    head = (
        f"calibration: {cal['host_gflops']:.1f} GFLOPS on {cal['workload']} "
        f"(spread {cal['spread'] * 100:.0f} %)\n\nMQTT round trip, QoS 0, 100 bytes, through "
        "each emulated link:\n\n"
    )
    headers = ("link", "rate Mbit/s", "expected ms (2 x delay)", "median ms", "p5 ms", "p95 ms",
               "median - expected")  # fmt: skip
    rows = [
        [r["link"], r["rate_mbit"], r["expected_ms"], r["median_ms"], r["p5_ms"], r["p95_ms"],
         r["median_ms"] - r["expected_ms"]]
        for r in result["links"]
    ]  # fmt: skip
    return head + markdown_table(headers, rows)
