"""`ddnn bench load` as text: a Markdown table from the report's JSON object (so a saved
`--json` renders the same), one row per step in grid order, and the highest load held."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def _ms(x: float | None, deadline_ms: float) -> str:
    """None: the percentile fell on a request never answered in time (no deadline: no data)."""
    if x is None:
        return "-" if math.isinf(deadline_ms) else f"> {deadline_ms:g}"
    return "-" if math.isnan(x) else f"{x:.1f}"


def _cpu_text(s: Row) -> str:
    broker = "-" if s["broker_cpu_pct"] is None else f"{s['broker_cpu_pct']:.0f}"
    return (
        f"{s['server_cpu_pct']:.0f} / {broker} / {s['generator_cpu_pct']:.0f} / "
        f"{s['other_cpu_pct']:.0f}"
    )


def _rss_text(s: Row) -> str:
    rss = s["server_rss_mb"]
    return f"{rss['start']:.0f} -> {rss['end']:.0f}"


# (header, right-aligned, cell from a step and the deadline in ms)
COLUMNS: tuple[tuple[str, bool, Callable[[Row, float], str]], ...] = (
    ("devices", True, lambda s, dl: f"{s['devices']}"),
    ("req/s each", True, lambda s, dl: f"{s['rate_per_device']:g}"),
    ("offered/s", True, lambda s, dl: f"{s['offered_per_s']:g}"),
    ("sent/s", True, lambda s, dl: f"{s['achieved_send_per_s']:.0f}"),
    ("ok", True, lambda s, dl: f"{s['ok']}"),
    ("shed", True, lambda s, dl: f"{s['shed']}"),
    ("errors", True, lambda s, dl: f"{s['errors']}"),
    ("lost", True, lambda s, dl: f"{s['lost']}"),
    ("p50 ms", True, lambda s, dl: _ms(s["p50_ms"], dl)),
    ("p99 ms", True, lambda s, dl: _ms(s["p99_ms"], dl)),
    ("send lag p99 ms", True, lambda s, dl: _ms(s["send_lag_p99_ms"], dl)),
    ("server queue ms", True, lambda s, dl: _ms(s["server_queue_ms_mean"], math.inf)),
    ("mean batch", True, lambda s, dl: f"{s['mean_batch']:.1f}"),
    ("CPU % server / broker / gen / other", False, lambda s, dl: _cpu_text(s)),
    ("server RSS MB", False, lambda s, dl: _rss_text(s)),
    ("verdict", False, lambda s, dl: s["verdict"]),
)
_LEADING = 3  # columns a skipped step fills (devices, rate, offered load)


def _row(s: Row, dl: float) -> str:
    if "after" in s:  # skipped
        k, r = s["devices"], s["rate_per_device"]
        cells = [f"{k}", f"{r:g}", f"{k * r:g}"]
        blank = " |" * (len(COLUMNS) - _LEADING - 1)
        after = f"skipped (failed at {s['after'][0]} x {s['after'][1]:g})"
        return "| " + " | ".join(cells) + f" |{blank} {after} |"
    return "| " + " | ".join(cell(s, dl) for _, _, cell in COLUMNS) + " |"


def bench_load_text(r: dict[str, Any]) -> str:
    """A Markdown table, one row per step in grid order, and the highest load held."""
    srv, dl = r["server"], r["deadline_ms"]
    lines = [
        f"model {r['model']} v{r['version']}: {srv['processes']} x `ddnn serve` "
        f"({srv['workers']} workers, max batch {srv['max_batch']}, queue {srv['queue_limit']}) "
        f"+ Mosquitto + {r['generators']} load generator process(es) on {r['cpus']} CPUs; "
        f"{r['seconds']:g} s a step, open loop, deadline {dl:g} ms, latency from the scheduled "
        f"send. CPU while sending, in % of one core (the machine has {100 * (r['cpus'] or 1)}); "
        "other = processes outside the benchmark.",
        "",
        "| " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|" + "".join("---:|" if right else "---|" for _, right, _ in COLUMNS),
    ]
    rows = sorted(r["steps"] + r["skipped"], key=lambda s: (s["devices"], s["rate_per_device"]))
    lines += [_row(s, dl) for s in rows]
    b = r["best"]
    held = (
        "none"
        if b is None
        else f"{b['devices']} devices x {b['rate_per_device']:g} req/s = "
        f"{b['offered_per_s']:g} req/s, p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms"
    )
    lines += ["", f"highest load held (lost 0, none shed, p99 under the deadline): {held}"]
    return "\n".join(lines)
