"""Plain-text tables of reports, for the CLI and for docs/results.md (Markdown pipes)."""

from __future__ import annotations

from typing import Any

from ddnn.tables import format_cell, markdown_table

REPORT_COLUMNS = (
    "threshold", "local", "server", "overall", "ideal", "cloud_only",
    "local_exit_fraction", "bytes_per_sample",
)  # fmt: skip


def report_row(rep: dict[str, Any]) -> list[Any]:
    acc = rep["accuracy"]
    return [
        rep["threshold"], acc["local"], acc["server"], acc["overall"], acc["ideal"],
        acc["cloud_only"], rep["local_exit_fraction"], rep["bytes_per_sample"],
    ]  # fmt: skip


def report_text(rep: dict[str, Any], title: str = "") -> str:
    """One report: the headline table, then exits, then extras (priority classes, edge bytes)."""
    parts = [title] if title else []
    parts.append(markdown_table(REPORT_COLUMNS, [report_row(rep)]))
    parts.append(
        markdown_table(
            ("exit", "fraction", "accuracy where taken", "accuracy on all"),
            [
                (name, e["fraction"], e["accuracy_taken"], e["accuracy_all"])
                for name, e in rep["exits"].items()
            ],
        )
    )
    extras = [f"raw bytes per sample: {rep['raw_bytes_per_sample']:.0f}"]
    if rep["bytes_per_sample"]:
        extras.append(f"reduction: {rep['raw_bytes_per_sample'] / rep['bytes_per_sample']:.1f}x")
    if "edge_bytes_per_sample" in rep:
        extras.append(f"edge -> cloud bytes per sample: {rep['edge_bytes_per_sample']:.1f}")
    if "priority" in rep:
        p = rep["priority"]
        accuracy, on_device = format_cell(p["accuracy"]), format_cell(p["answered_on_device"])
        extras.append(
            f"prioritized classes {p['classes']}: accuracy {accuracy}, answered on "
            f"device {on_device}; "
            f"cloud calls (all samples) {p['cloud_calls']:.4f}"
        )
    parts.append("; ".join(extras))
    return "\n\n".join(parts)


def ablation_text(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ("devices", "local", "overall", "cloud_only", "local_exit_fraction", "bytes_per_sample"),
        [
            (
                r["devices"], r["accuracy"]["local"], r["accuracy"]["overall"],
                r["accuracy"]["cloud_only"], r["local_exit_fraction"], r["bytes_per_sample"],
            )
            for r in rows
        ],
    )  # fmt: skip
