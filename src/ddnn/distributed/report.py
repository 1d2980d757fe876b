"""Tables and a plot over distributed run folders: total time, time per step split into compute
and communication, test accuracy. Reads what rank 0 wrote (distributed.json, metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddnn.distributed.trainer import RECORD_FILE
from ddnn.errors import DdnnError

COLUMNS = (
    "run", "strategy", "N", "global batch", "lr rule", "lr", "epochs", "train s", "s/epoch",
    "compute ms/step", "comm ms/step", "test acc",
)  # fmt: skip


def summarize(run_dir: str | Path) -> dict[str, Any]:
    folder = Path(run_dir)
    if not (folder / RECORD_FILE).is_file():
        raise DdnnError(f"{folder}: no {RECORD_FILE}; not a distributed run folder")
    rec = json.loads((folder / RECORD_FILE).read_text())
    epochs = rec["epochs"]
    if not epochs:
        raise DdnnError(f"{folder}: no finished epoch recorded yet")
    test = None
    if (folder / "metrics.json").is_file():
        test = json.loads((folder / "metrics.json").read_text())["test"]["accuracy"]["overall"]
    strategy = rec["strategy"] + (f"-{rec['ps_mode']}" if rec["strategy"] == "ps" else "")
    strategy += "+fp16" if rec["compress"] == "fp16" else ""
    train_s = sum(e["seconds"] for e in epochs)
    rule = rec.get("lr_scaling", "none")
    if rec.get("warmup_epochs"):
        rule += f" + {rec['warmup_epochs']:g} ep warm-up"
    return {
        "run": folder.name, "strategy": strategy, "workers": rec["workers"],
        "global_batch": rec["global_batch"], "lr_rule": rule, "lr": rec["lr"],
        "epochs": len(epochs),
        "train_seconds": train_s, "epoch_seconds": train_s / len(epochs),
        "compute_ms": 1e3 * sum(e["compute_per_step"] for e in epochs) / len(epochs),
        "comm_ms": 1e3 * sum(e["comm_per_step"] for e in epochs) / len(epochs),
        "test_accuracy": test,
    }  # fmt: skip


def summary_row(s: dict[str, Any]) -> list[str]:
    acc = "-" if s["test_accuracy"] is None else f"{s['test_accuracy']:.4f}"
    return [
        s["run"], s["strategy"], str(s["workers"]), str(s["global_batch"]), s["lr_rule"],
        f"{s['lr']:g}",
        str(s["epochs"]), f"{s['train_seconds']:.1f}", f"{s['epoch_seconds']:.1f}",
        f"{s['compute_ms']:.1f}", f"{s['comm_ms']:.1f}", acc,
    ]  # fmt: skip


def plot_summaries(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Stacked compute + communication per step, total training time and test accuracy, per
    run (labelled by run folder name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["run"].replace("-", "\n") for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    xs = range(len(rows))
    ax1.bar(xs, [r["compute_ms"] for r in rows], label="compute")
    ax1.bar(xs, [r["comm_ms"] for r in rows], bottom=[r["compute_ms"] for r in rows],
            label="communication")  # fmt: skip
    ax1.set_xticks(list(xs), labels, fontsize=8)
    ax1.set_ylabel("ms per step (per worker)")
    ax1.legend()
    ax2.bar(xs, [r["train_seconds"] for r in rows], color="gray")
    for x, r in zip(xs, rows, strict=True):
        if r["test_accuracy"] is not None:
            ax2.text(x, r["train_seconds"], f"{r['test_accuracy']:.3f}", ha="center", fontsize=8)
    ax2.set_xticks(list(xs), labels, fontsize=8)
    ax2.set_ylabel("training seconds (labels: test accuracy)")
    accs = [r["test_accuracy"] or 0.0 for r in rows]
    ax3.bar(xs, accs, color="tab:green")
    if any(accs):
        ax3.set_ylim(max(0.0, min(a for a in accs if a > 0) - 0.05), max(accs) + 0.01)
    one = [a for r, a in zip(rows, accs, strict=True) if r["workers"] == 1 and a > 0]
    if one:  # the target: within 1 point of one node
        ax3.axhline(one[0] - 0.01, color="red", linestyle="--", linewidth=1,
                    label="N=1 accuracy - 1 point")  # fmt: skip
        ax3.legend(fontsize=8)
    ax3.set_xticks(list(xs), labels, fontsize=8)
    ax3.set_ylabel("test accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
