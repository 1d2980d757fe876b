"""Teaching the device's local exit from the cloud: `ddnn train --from RUN --distill STORE`.

Only the local exit head (of every device) is trained, on the device features of collected
requests, with the cloud's confident answers (and labels the user gives) as targets. The device
trunk and every upper section keep their weights bit for bit, so the features a device of the
new version sends are the features the old server section was trained on: version + 1 is a
consistent pair by construction, and any server can answer either version's devices. Records
that hold the raw input (server-only mode) go through the frozen trunk first. Fine-tuning the
trunk itself would need the server section frozen and a loss that keeps the cloud exit's output
on the new features; it is not done here (docs/learning.md says why).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ddnn.errors import DdnnError
from ddnn.evaluate.policy import confident, exit_predictions
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.outputs import class_map
from ddnn.nn.binary import clip_latent_weights
from ddnn.nn.entropy import normalized_entropy
from ddnn.store.artifact import open_model, save_model
from ddnn.store.collected import load_collection, pick_group, read_labels, targets
from ddnn.store.durable import json_bytes, replace_files
from ddnn.store.local import device_features, local_logits
from ddnn.train.loss import target_maps
from ddnn.train.trainer import REPORT_FILE, prepare_run_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    max_entropy: float = 0.2  # the cloud's answer is a target when its entropy is at most this
    labels: str | None = None  # CSV `seq,label`: given labels win
    epochs: int = 30
    lr: float = 0.002
    batch_size: int = 64
    holdout: float = 0.2  # of the labelled records, kept aside to report before/after on
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DdnnError("distillation: epochs, batch size and lr must be positive")
        if not 0.0 <= self.holdout < 1.0:
            raise DdnnError(f"distillation: holdout must be in [0, 1), got {self.holdout}")


@torch.no_grad()
def local_report(
    model: HierarchicalModel, feats: Tensor, present: Tensor, y: Tensor, threshold: float
) -> dict[str, float]:
    """How the local exit does on labelled records: agreement with the targets, the share it
    answers at `threshold` and its accuracy there."""
    if not len(y):
        return {"agreement": float("nan"), "local_fraction": float("nan"), "local_accuracy": 0.0}
    local = model.spec.exit_sections[0].name
    logits = local_logits(model, feats, present)
    preds = exit_predictions(logits.numpy(), class_map(model, local))
    answered = confident(normalized_entropy(logits).numpy(), preds, threshold)
    right = preds == y.numpy()
    return {
        "agreement": float(right.mean()),
        "local_fraction": float(answered.mean()),
        "local_accuracy": float(right[answered].mean()) if answered.any() else 0.0,
    }


def distill(
    init_from: str | Path, store: str | Path, out: str | Path, config: DistillConfig, *,
    overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Fine-tune `init_from`'s local exit on `store` into `out` as version + 1; the report."""
    stored = open_model(init_from)
    model, spec = stored.load(), stored.spec
    dev = spec.device_section
    if dev is None or dev.exit is None or len(spec.exit_sections) < 2:
        raise DdnnError(f"{init_from}: model {spec.name} has no local exit on its device to teach")
    if Path(init_from).resolve() == Path(out).resolve():
        raise DdnnError(f"--from {init_from} is the --out folder: distill into another one")
    group = pick_group(load_collection(store), model=stored.name, version=stored.version)
    labels = read_labels(config.labels) if config.labels else None
    rows, y_np, source = targets(group, config.max_entropy, labels)
    if len(rows) < 2:
        raise DdnnError(
            f"{store}: {len(rows)} of {len(group)} records have a label; raise --max-entropy "
            f"(now {config.max_entropy}), give --labels or collect more"
        )
    if y_np.max() >= spec.num_classes:
        raise DdnnError(f"labels reach class {y_np.max()}; the model has {spec.num_classes}")
    prepare_run_dir(out, overwrite)
    feats = device_features(model, group, rows)  # [N, D, ...]
    present = torch.from_numpy(group.columns["present"][rows].astype(bool))  # [N, D]
    y = torch.from_numpy(y_np)
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(rows), generator=gen)
    n_hold = int(len(rows) * config.holdout)
    hold, train = order[:n_hold], order[n_hold:]
    threshold = spec.thresholds[dev.name]
    before = local_report(model, feats[hold], present[hold], y[hold], threshold)
    _fit_heads(model, feats[train], present[train], y[train], config, gen)
    after = local_report(model, feats[hold], present[hold], y[hold], threshold)
    report = {
        "store": str(store), "parent_version": stored.version, "version": stored.version + 1,
        "records": len(group), "labelled": len(rows), "given_labels": int(source.sum()),
        "train": len(train), "holdout": n_hold, "threshold": threshold,
        "max_entropy": config.max_entropy, "before": before, "after": after,
    }  # fmt: skip
    parent = str(Path(init_from).resolve())
    save_model(model, out, stored.version + 1, parent, {"distill": report}, data=stored.data)
    replace_files(Path(out), {REPORT_FILE: json_bytes({"distill": report})})
    log.info("distilled %s v%d into %s v%d", spec.name, stored.version, out, stored.version + 1)
    return report


def _fit_heads(
    model: HierarchicalModel, feats: Tensor, present: Tensor, y: Tensor, config: DistillConfig,
    gen: torch.Generator,
) -> None:  # fmt: skip
    """Train the local exit heads only: the trunk and upper sections stay in eval mode with
    their weights untouched (no optimizer holds them)."""
    local = model.spec.exit_sections[0].name
    target = target_maps(model.spec)[local][y]  # dataset class -> exit class
    heads = [d.exit_head for d in model.devices]
    params = [p for h in heads for p in h.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    model.eval()
    for h in heads:
        h.train()
    for _ in range(config.epochs):
        for batch in torch.randperm(len(y), generator=gen).split(config.batch_size):
            if len(batch) < 2:  # batch norm needs two samples
                continue
            loss = F.cross_entropy(local_logits(model, feats[batch], present[batch]), target[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for h in heads:
                clip_latent_weights(h)
    model.eval()


def distill_text(report: dict[str, Any]) -> str:
    """The report as a line and a before/after table of the held-out records."""
    from ddnn.tables import markdown_table

    head = (
        f"v{report['parent_version']} -> v{report['version']}: {report['labelled']} of "
        f"{report['records']} records labelled ({report['given_labels']} given, the rest the "
        f"cloud's at entropy <= {report['max_entropy']}); trained on {report['train']}, "
        f"{report['holdout']} held out; local exit threshold {report['threshold']:.3f}"
    )
    rows = [
        [name, f"{r['agreement']:.1%}", f"{r['local_fraction']:.1%}", f"{r['local_accuracy']:.1%}"]
        for name, r in (("before", report["before"]), ("after", report["after"]))
    ]
    columns = ["held out", "local = target", "local exit answers", "its accuracy"]
    return head + "\n\n" + markdown_table(columns, rows)
