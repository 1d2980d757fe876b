"""`bench_fuzz`: the decoder properties, then the live server; and its markdown tables."""

from __future__ import annotations

from typing import Any

from ddnn.bench.fuzz.live import LIVE_FAILURES, live_fuzz
from ddnn.bench.fuzz.properties import PROPERTIES, run_property
from ddnn.errors import DdnnError


def bench_fuzz(
    examples: int,
    run_dir: str | None = None,
    live: int | None = None,
    seed: int | None = None,
    progress: bool = False,
    *,
    mqtt_client: str | None = None,
) -> dict[str, Any]:
    """Every decoder property with `examples` inputs, then (with a model) the live server: on
    an in-memory hub, or through a real broker with `mqtt_client`."""
    if examples < 1:
        raise DdnnError("--examples must be at least 1")
    properties = [run_property(name, examples, seed, progress) for name in PROPERTIES]
    live_result = None
    if run_dir is not None:
        messages = examples if live is None else live
        live_result = live_fuzz(run_dir, messages, seed, progress, mqtt_client=mqtt_client)
    bad = sum(p["escaped"] + p["violations"] for p in properties)
    if live_result is not None:
        bad += sum(live_result[k] for k in LIVE_FAILURES) + (not live_result["server_healthy"])
    return {
        "examples": examples,
        "seed": seed,
        "properties": properties,
        "live": live_result,
        "mqtt_client": mqtt_client,
        "ok": bad == 0,
    }


def bench_fuzz_text(r: dict[str, Any]) -> str:
    """Markdown tables: the decoder properties, then the live server."""
    lines = [
        f"decoder properties, up to {r['examples']} generated inputs each"
        + (f" (seed {r['seed']})" if r["seed"] is not None else ""),
        "",
        "| property | frames tried | rejected (FrameError) | accepted | exceptions escaped | "
        "broken round trips | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r["properties"]:
        lines.append(
            f"| {p['property']} | {p['tried']} | {p['rejected']} | {p['accepted']} | "
            f"{p['escaped']} | {p['violations']} | {p['seconds']:.0f} |"
        )
    lv = r["live"]
    if lv is None:
        lines += ["", "live server: skipped (give a RUN_DIR to fuzz a real InferenceServer)"]
    else:
        cats = ", ".join(f"{k} {v}" for k, v in lv["by_category"].items())
        codes = ", ".join(f"{k} {v}" for k, v in sorted(lv["codes"].items()))
        where = f"Mosquitto via {r['mqtt_client']}" if r.get("mqtt_client") else "memory://"
        lines += [
            "",
            f"live InferenceServer on {where} ({cats}); {lv['seconds']:.0f} s",
            "",
            "| messages tried | rejected with an error frame | accepted (valid) | no reply address "
            "| duplicates dropped | unanswered | malformed accepted | exceptions escaped | "
            "valid requests answered after |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {lv['tried']} | {lv['rejected']} | {lv['accepted']} | {lv['unanswerable']} | "
            f"{lv['duplicates_dropped']} | {lv['unanswered']} | {lv['accepted_malformed']} | "
            f"{lv['escaped'] + lv['internal_errors']} | "
            f"{lv['probes_ok']} / {lv['probes_ok'] + lv['probes_failed']} |",
            "",
            f"error codes: {codes}; server healthy at the end: {lv['server_healthy']}",
        ]
        if lv["wrong_codes"] or lv["unexpected_answers"]:
            lines.append(
                f"wrong codes {lv['wrong_codes']}, unexpected answers {lv['unexpected_answers']}"
            )
    failures = [f for p in r["properties"] for f in p["failures"]]
    failures += lv["failures"] if lv else []
    for f in failures[:10]:
        lines.append(f"FAILED {f['kind']}: {f['error']} on {f['input'][:120]}")
    lines += ["", "result: " + ("ok" if r["ok"] else "FAILED")]
    return "\n".join(lines)
