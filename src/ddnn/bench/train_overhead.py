"""`ddnn bench train`: one training epoch through the framework against a plain PyTorch loop over
the same model, initial weights and batches, alternated so machine noise hits both alike."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace
from typing import Any

import torch
from torch.nn import functional as F

from ddnn.data.datasets import Split, create_dataset
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.inputs import fit_to_data
from ddnn.model.views import split_views
from ddnn.nn.binary import clip_latent_weights
from ddnn.train.config import load_experiment
from ddnn.train.loss import target_maps
from ddnn.train.trainer import StepContext, make_optimizer, run_epoch


def _plain_epoch(model: HierarchicalModel, split: Split, batch_size: int, lr: float) -> float:
    """What a user would write by hand: forward, sum of the exits' cross-entropies, step."""
    maps = target_maps(model.spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0 = time.perf_counter()
    for x, y in split.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)):
        logits = model(split_views(x, model.spec))
        loss = sum(F.cross_entropy(lg, maps[n][y]) for n, lg in logits.items())
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        clip_latent_weights(model)
    return time.perf_counter() - t0


def _framework_epoch(model: HierarchicalModel, split: Split, batch_size: int, lr: float) -> float:
    cfg = replace(load_experiment(model.spec.name).train, lr=lr, optimizer="adam")
    ctx = StepContext(
        model=model,
        optimizer=make_optimizer(model, cfg),
        scheduler=None,
        maps=target_maps(model.spec),
        device_dropout=0.0,
        generator=torch.Generator().manual_seed(0),
        has_binary=True,
    )
    t0 = time.perf_counter()
    run_epoch(ctx, split, batch_size, desc="framework epoch")
    return time.perf_counter() - t0


def bench_train(
    preset: str, dataset: str, data_dir: str | None, samples: int, repeats: int
) -> dict[str, Any]:
    exp = load_experiment(preset)
    data = create_dataset(dataset, data_dir)
    spec = fit_to_data(exp.model, data)
    torch.manual_seed(0)
    initial = HierarchicalModel(spec)
    split = data.train.head(samples)
    batch, lr = exp.train.batch_size, exp.train.lr
    _plain_epoch(copy.deepcopy(initial), split.head(batch * 4), batch, lr)  # warm-up both paths
    _framework_epoch(copy.deepcopy(initial), split.head(batch * 4), batch, lr)
    plain, framework = [], []
    for _ in range(repeats):
        plain.append(_plain_epoch(copy.deepcopy(initial), split, batch, lr))
        framework.append(_framework_epoch(copy.deepcopy(initial), split, batch, lr))
    ratios = [f / p for f, p in zip(framework, plain, strict=True)]
    return {
        "preset": preset,
        "samples": len(split),
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "plain_s": plain,
        "framework_s": framework,
        "plain_median_s": statistics.median(plain),
        "framework_median_s": statistics.median(framework),
        "ratio_median": statistics.median(ratios),
        "target": 1.10,
    }


def bench_train_text(r: dict[str, Any]) -> str:
    return (
        f"training epoch, preset {r['preset']}, {r['samples']} samples, batch {r['batch_size']}, "
        f"{r['threads']} threads, {len(r['plain_s'])} alternating repeats\n"
        f"  plain PyTorch loop   median {r['plain_median_s']:.3f} s\n"
        f"  ddnn trainer         median {r['framework_median_s']:.3f} s\n"
        f"  overhead ratio       median {r['ratio_median']:.3f} (target <= {r['target']:.2f}), "
        f"ratio of medians {r['framework_median_s'] / r['plain_median_s']:.3f}\n"
        f"  every repeat (s): plain {', '.join(f'{t:.2f}' for t in r['plain_s'])}; "
        f"ddnn {', '.join(f'{t:.2f}' for t in r['framework_s'])}"
    )
