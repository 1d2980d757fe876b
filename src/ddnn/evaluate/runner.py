"""Run a model over a split once, keeping every exit's logits, so any threshold can be scored
without running the model again."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddnn.data.datasets import Split
from ddnn.evaluate.communication import CommCosts
from ddnn.evaluate.metrics import report
from ddnn.evaluate.policy import ExitOutputs, check_threshold
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import class_map
from ddnn.model.views import split_views, with_data_presence


@torch.no_grad()
def collect_outputs(
    model: HierarchicalModel,
    split: Split,
    batch_size: int = 512,
    present: Tensor | None = None,
) -> ExitOutputs:
    """present [D] bool: which devices take part (None: all of them); a multi-view split's own
    missing views are missing devices too."""
    model.eval()
    logits: dict[str, list[np.ndarray]] = {}
    devices = model.spec.devices
    mask = present if present is not None else torch.ones(devices, dtype=torch.bool)
    counts = []
    for x, _, data_present in split.batches_present(batch_size):
        views = split_views(x, model.spec)  # [B, D, C, h, w]
        batch_mask = mask.expand(len(x), devices)  # [B, D]
        batch_mask = with_data_presence(batch_mask, data_present)
        counts.append(batch_mask.sum(dim=1))
        for name, value in model(views, batch_mask).items():
            logits.setdefault(name, []).append(value.numpy())
    names = list(logits)
    return ExitOutputs(
        names=names,
        logits=[np.concatenate(logits[n]) for n in names],
        labels=split.labels.numpy(),
        class_maps=[class_map(model, n) for n in names],
        devices_present=torch.cat(counts).numpy().astype(np.int64)
        if counts
        else np.zeros(0, dtype=np.int64),
    )


def has_local_exit(model: HierarchicalModel) -> bool:
    dev = model.spec.device_section
    return dev is not None and dev.exit is not None


def evaluate_outputs(
    model: HierarchicalModel, outputs: ExitOutputs, thresholds: list[float] | None = None
) -> dict[str, Any]:
    """Report for stored thresholds (None) or the given ones (one per non-final exit)."""
    if thresholds is None:
        thresholds = list(model.spec.thresholds.values())
    for t in thresholds:
        check_threshold(t)
    dev = model.spec.device_section
    prio = dev.exit.classes if dev is not None and dev.exit is not None else None
    return report(outputs, thresholds, CommCosts.of(model), has_local_exit(model), prio)


def device_ablation(model: HierarchicalModel, split: Split) -> list[dict[str, Any]]:
    """For a multi-device model: the report with all devices, with each one missing, with each
    one alone (the single-device baselines fusion must beat), and with the first k devices for
    k = 2 .. D-1 (DDNN's scaling across end devices: devices added one by one)."""
    devices = model.spec.devices
    rows = []
    cases: list[tuple[str, list[int]]] = [("all", list(range(devices)))]
    cases += [(f"first {k} devices", list(range(k))) for k in range(2, devices)]
    cases += [
        (f"without device {d}", [i for i in range(devices) if i != d]) for d in range(devices)
    ]
    cases += [(f"device {d} alone", [d]) for d in range(devices)]
    for label, members in cases:
        mask = torch.zeros(devices, dtype=torch.bool)
        mask[members] = True
        rep = evaluate_outputs(model, collect_outputs(model, split, present=mask))
        rows.append({"devices": label, **rep})
    return rows
