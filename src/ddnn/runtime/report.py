"""From per-sample records (as devices saw them) to the deployment report: accuracy where each
answer came from, the time decomposition per tier, bytes actually sent, lost and degraded."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from ddnn.stats import percentile
from ddnn.tables import markdown_table


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


def frames(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several devices' records of one event -> one row: the answer most of them got, the
    slowest device's times, the bytes of all devices together."""
    by_frame: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_frame[int(r["frame_id"])].append(r)
    rows = []
    for frame_id, recs in sorted(by_frame.items()):
        answered = [r for r in recs if r["predicted"] >= 0]
        predicted = (
            Counter(r["predicted"] for r in answered).most_common(1)[0][0] if answered else -1
        )
        slowest = max(recs, key=lambda r: r["total_ms"])
        statuses = {r["status"] for r in recs}
        rows.append(
            {
                "frame_id": frame_id,
                "label": recs[0]["label"],
                "predicted": predicted,
                "local_predicted": recs[0]["local_predicted"],
                "exit_index": slowest["exit_index"],
                "offloaded": any(r["offloaded"] for r in recs),
                "status": next(s for s in ("lost", "error", "degraded", "ok") if s in statuses),
                **{k: slowest[k] for k in ("device_ms", "comm_ms", "server_ms", "total_ms")},
                "frame_bytes": sum(r["frame_bytes"] for r in recs),
                "packet_bytes": sum(r["packet_bytes"] for r in recs),
            }
        )
    return rows


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = frames(records)
    n = len(rows)
    if n == 0:
        return {"samples": 0}
    label = np.array([r["label"] for r in rows])
    pred = np.array([r["predicted"] for r in rows])
    local_pred = np.array([r["local_predicted"] for r in rows])
    exit_index = np.array([r["exit_index"] for r in rows])
    degraded = np.array([r["status"] == "degraded" for r in rows])
    has_local = bool((local_pred >= 0).any())
    correct = pred == label
    local_correct = local_pred == label
    # answered by the local exit (on the device, or the edge's fused one), not as a fallback
    at_local = (exit_index == 0) & ~degraded
    up = (exit_index > 0) & (pred >= 0)
    return {
        "samples": n,
        "accuracy": {
            "local": float(local_correct.mean()) if has_local else None,
            "server": float(correct[up].mean()) if up.any() else None,
            "overall": float(correct.mean()),
            # every exit this deployment actually computed: the local one, and the server's
            # answer for the samples that went up
            "ideal": float((correct | (local_correct & has_local)).mean()),
        },
        "local_exit_fraction": float(at_local.mean()),
        "time_ms": {
            k: _pct([r[f"{k}_ms"] for r in rows]) for k in ("device", "comm", "server", "total")
        },
        "bytes_per_sample": float(np.mean([r["frame_bytes"] for r in rows])),
        "mqtt_bytes_per_sample": float(np.mean([r["packet_bytes"] for r in rows])),
        "lost": int(sum(r["status"] == "lost" for r in rows)),
        "errors": int(sum(r["status"] == "error" for r in rows)),
        "degraded": int(sum(r["status"] == "degraded" for r in rows)),
    }


def report_markdown(report: dict[str, Any]) -> str:
    headers = (
        "configuration", "samples", "local", "server", "overall", "ideal", "local exit",
        "device p50/p95 ms", "comm p50/p95 ms", "server p50/p95 ms", "total p50/p95 ms",
        "bytes/sample", "lost", "degraded",
    )  # fmt: skip

    def pair(t: dict[str, float | None]) -> str:
        return "-" if t["p50"] is None else f"{t['p50']:.2f} / {t['p95']:.2f}"

    rows = []
    for name, c in report["configurations"].items():
        a, t = c["accuracy"], c["time_ms"]
        rows.append(
            [
                name, c["samples"], a["local"], a["server"], a["overall"], a["ideal"],
                c["local_exit_fraction"], pair(t["device"]), pair(t["comm"]), pair(t["server"]),
                pair(t["total"]), c["bytes_per_sample"], c["lost"], c["degraded"],
            ]
        )  # fmt: skip
    table = markdown_table(headers, rows)
    emulated = emulation_text(report.get("emulation"))
    if emulated:
        table = f"{emulated}\n\n{table}"
    if not report.get("thresholds"):
        return table
    given = ", ".join(f"{k} {v:g}" for k, v in report["thresholds"].items())
    budget = report.get("latency_budget_ms")
    adaptive = f"; devices adapt the local one to a {budget:g} ms budget" if budget else ""
    return f"exit thresholds ({report['threshold_source']}): {given}{adaptive}\n\n{table}"


def emulation_text(emulation: dict[str, Any] | None) -> str:
    """What the devices were emulated as, the host's calibration, and what was not emulated."""
    if not emulation:
        return ""
    lines = ["emulated devices:"] + [f"- {note}" for note in emulation["notes"]]
    cal = emulation.get("calibration")
    if cal:
        lines.append(
            f"- calibration: this host {cal['host_gflops']:.1f} GFLOPS on {cal['workload']} "
            f"(spread {cal['spread'] * 100:.0f} %, {cal['measured_at']}; "
            f"{cal.get('source', 'measured')})"
        )
    return "\n".join(lines)
