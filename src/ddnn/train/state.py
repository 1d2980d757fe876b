"""Resumable training state without pickle: tensors in safetensors, the rest in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ddnn.errors import DdnnError

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def save_train_state(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    info: dict[str, Any],
) -> None:
    """Everything needed to continue after `info["epoch"]`."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()
    }
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    doc = {
        "info": info,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    tmp = folder / (STATE_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / STATE_TENSORS)  # atomic: a crash mid-write keeps the previous state
    (folder / STATE_JSON).write_text(json.dumps(doc, indent=2))


def load_train_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler; returns the saved info (epoch, best, ...)."""
    if not (folder / STATE_TENSORS).is_file() or not (folder / STATE_JSON).is_file():
        raise DdnnError(f"{folder} has no training state to resume from (train_state.*)")
    tensors = load_file(str(folder / STATE_TENSORS))
    doc = json.loads((folder / STATE_JSON).read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in doc["optim_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    if scheduler is not None and doc["scheduler"] is not None:
        scheduler.load_state_dict(doc["scheduler"])
    return doc["info"]
