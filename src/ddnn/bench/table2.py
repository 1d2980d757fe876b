"""`ddnn bench table2`: seed 004's TABLE II on an emulated device and link. For each design,
device+server against server-only: accuracy at each exit and the time per tier.

Accuracy comes from the whole test split at the threshold (as `ddnn evaluate --threshold T`):
the emulated run streams only its first samples, too few to tell a point of accuracy apart. The
times are what the emulated device recorded (mean and median per sample; seed 004 reports one
figure per tier, a mean). The run's own accuracy on its samples is shown beside, as a check that
the deployment answers as the offline model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddnn.bench.emulated import run_emulated
from ddnn.runtime.protocol import DEVICE_SERVER, MODES
from ddnn.tables import markdown_table

TIERS = ("device", "comm", "server", "total")


@dataclass(frozen=True)
class TierRow:
    """One design in one configuration: accuracy (test split) and measured times (ms)."""

    design: str
    configuration: str
    local: float | None
    server: float | None
    overall: float
    ideal: float | None
    local_exit_fraction: float
    mean_ms: dict[str, float]  # tier -> mean per sample
    median_ms: dict[str, float]
    bytes_per_sample: float  # MQTT PUBLISH bytes sent up, as `ddnn run` counts them
    run_accuracy: float  # overall accuracy on the streamed samples
    samples: int


@dataclass(frozen=True)
class Table2:
    """Every design in both configurations, and what the emulation was (its notes)."""

    device_profile: str
    link: str
    threshold: float
    samples: int
    rows: tuple[TierRow, ...]
    emulation: dict[str, dict[str, Any]]  # design -> its run's emulation (profiles, notes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def offline_accuracy(run_dir: str | Path, threshold: float) -> dict[str, Any]:
    """`ddnn evaluate RUN --threshold T` on the test split: the report's accuracy block and
    local exit fraction."""
    from ddnn.evaluate.runner import collect_outputs, evaluate_outputs
    from ddnn.store.artifact import open_model

    stored = open_model(run_dir)
    model = stored.load()
    test = stored.data_source(None, None).load(val_fraction=0.1).test
    outputs = collect_outputs(model, test)
    report = evaluate_outputs(model, outputs, [threshold] * (len(outputs.names) - 1))
    return {"accuracy": report["accuracy"], "local_exit_fraction": report["local_exit_fraction"]}


def tier_row(
    design: str, mode: str, offline: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> TierRow:
    """Offline accuracy and the run's per-frame rows -> the row of one configuration."""
    acc = offline["accuracy"]
    split = mode == DEVICE_SERVER
    return TierRow(
        design=design,
        configuration=mode,
        local=acc["local"] if split else None,
        server=acc["server"] if split else None,
        overall=acc["overall"] if split else acc["cloud_only"],
        ideal=acc["ideal"] if split else None,
        local_exit_fraction=offline["local_exit_fraction"] if split else 0.0,
        mean_ms={t: float(np.mean([r[f"{t}_ms"] for r in rows])) for t in TIERS},
        median_ms={t: float(np.median([r[f"{t}_ms"] for r in rows])) for t in TIERS},
        bytes_per_sample=float(np.mean([r["packet_bytes"] for r in rows])),
        run_accuracy=float(np.mean([r["predicted"] == r["label"] for r in rows])),
        samples=len(rows),
    )


def bench_table2(
    runs: Sequence[str],
    out_dir: str | Path,
    *,
    device_profile: str,
    link: str,
    threshold: float,
    samples: int,
) -> Table2:
    """Every run in both configurations on the emulation."""
    rows: list[TierRow] = []
    emulation: dict[str, dict[str, Any]] = {}
    for run in runs:
        design = Path(run).name
        offline = offline_accuracy(run, threshold)
        found = run_emulated(
            run, Path(out_dir) / design, device_profile=device_profile, link=link,
            threshold=threshold, samples=samples, modes=MODES, reuse=True,
        )  # fmt: skip
        emulation[design] = found.report.get("emulation", {})
        rows += [tier_row(design, mode, offline, found.rows[mode]) for mode in MODES]
    return Table2(device_profile, link, threshold, samples, tuple(rows), emulation)


COLUMNS = (
    "design", "configuration", "local", "server", "overall", "ideal", "local exit",
    "T_device ms", "T_comm ms", "T_server ms", "T_total ms", "T_total median ms",
    "MQTT B/sample", "run accuracy (n)",
)  # fmt: skip


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table2_text(result: Table2) -> str:
    """The TABLE II layout: accuracy in %, mean times per tier, then the median total."""
    lines = []
    for r in result.rows:
        m = r.mean_ms
        lines.append([
            r.design, r.configuration, _pct(r.local), _pct(r.server), _pct(r.overall),
            _pct(r.ideal), f"{r.local_exit_fraction:.2f}", f"{m['device']:.2f}",
            f"{m['comm']:.2f}", f"{m['server']:.2f}", f"{m['total']:.2f}",
            f"{r.median_ms['total']:.2f}", f"{r.bytes_per_sample:.0f}",
            f"{_pct(r.run_accuracy)} ({r.samples})",
        ])  # fmt: skip
    head = (
        f"{result.device_profile} + {result.link}, threshold {result.threshold:g}: "
        "accuracy (%) on the test split, times (ms, mean per sample) measured on the emulation"
    )
    seen = [n for e in result.emulation.values() for n in e.get("notes", [])]
    notes = "\n".join(f"- {n}" for n in dict.fromkeys(seen))  # each note once, in order
    return f"{head}\n\n{markdown_table(COLUMNS, lines)}" + (f"\n\n{notes}" if notes else "")
