"""Accuracy and communication report for one set of thresholds.

local: the local exit's accuracy over all samples; cloud_only: the final exit's over all samples;
server: accuracy among the samples that went past the device; overall: each sample answered where
it exited; ideal: correct if any exit is correct (an oracle's choice of exit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ddnn.evaluate.communication import CommCosts
from ddnn.evaluate.policy import ExitOutputs, choose_exits


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def report(
    outputs: ExitOutputs,
    thresholds: Sequence[float],
    costs: CommCosts,
    has_local_exit: bool,
    priority_classes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The metrics dict `ddnn evaluate --json` prints (see the module docstring)."""
    preds = outputs.predictions  # [E, N]
    correct = preds == outputs.labels[None, :]  # [E, N]
    taken = choose_exits(outputs.entropies, preds, thresholds)  # [N]
    n = len(outputs)
    answered = correct[taken, np.arange(n)]  # [N] correct where the sample exited
    local = taken == 0 if has_local_exit else np.zeros(n, dtype=bool)
    present = outputs.devices_present.astype(np.float64)  # [N]
    sent = present * costs.score_bytes + (~local) * present * costs.uplink_bytes
    edge_names = outputs.names[1:-1] if has_local_exit else outputs.names[:-1]
    result: dict[str, Any] = {
        "samples": n,
        "accuracy": {
            "local": _mean(correct[0]) if has_local_exit else None,
            "server": _mean(answered[~local]),
            "overall": _mean(answered),
            "ideal": _mean(correct.any(axis=0)),
            "cloud_only": _mean(correct[-1]),
        },
        "local_exit_fraction": float(local.mean()),
        "exits": {
            name: {
                "fraction": float((taken == e).mean()),
                "accuracy_taken": _mean(correct[e][taken == e]),
                "accuracy_all": _mean(correct[e]),
            }
            for e, name in enumerate(outputs.names)
        },
        "bytes_per_sample": float(sent.mean()),
        "raw_bytes_per_sample": float(costs.raw_bytes * present.mean()),
        "threshold": float(thresholds[0]) if len(thresholds) else None,
        "thresholds": dict(zip(outputs.names[:-1], map(float, thresholds), strict=True)),
    }
    if edge_names:
        past_edge = taken > len(outputs.names) - 2
        result["edge_bytes_per_sample"] = float((past_edge * costs.edge_bytes).mean())
    if priority_classes is not None:
        prio = np.isin(outputs.labels, list(priority_classes))
        result["priority"] = {
            "classes": [int(c) for c in priority_classes],
            "accuracy": _mean(answered[prio]),
            "answered_on_device": _mean(local[prio]),
            "cloud_calls": float((~local).mean()),
        }
    return result
