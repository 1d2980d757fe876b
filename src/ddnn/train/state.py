"""Resumable training state without pickle: tensors in safetensors, the rest in JSON.

Saved as one atomic step (store.durable) with train_state.json last: it holds the SHA-256 of the
tensor file, so a cut, damaged or mismatched pair is refused on resume, as a stored model is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from ddnn.errors import DdnnError
from ddnn.store.durable import (
    first_non_finite,
    json_bytes,
    replace_files,
    safetensors_bytes,
    sha256_hex,
)

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
_DOC_KEYS = ("sha256", "info", "param_groups", "optim_scalars", "scheduler")
START_OVER = "train again into a new --out folder or with --overwrite"


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
    data = safetensors_bytes(tensors)
    doc = {
        "sha256": sha256_hex(data),
        "info": info,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    replace_files(folder, {STATE_TENSORS: data, STATE_JSON: json_bytes(doc)})


def _read_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked (document, tensors) pair; a DdnnError naming the file otherwise."""
    tensor_path, json_path = folder / STATE_TENSORS, folder / STATE_JSON
    if not tensor_path.is_file() or not json_path.is_file():
        raise DdnnError(
            f"{folder} has no training state to resume from ({STATE_TENSORS} and {STATE_JSON}): "
            f"{START_OVER}"
        )
    try:
        doc = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdnnError(f"{json_path} is not valid JSON (cut or damaged): {START_OVER}") from exc
    missing = [k for k in _DOC_KEYS if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise DdnnError(f"{json_path} lacks {', '.join(missing)}: {START_OVER}")
    data = tensor_path.read_bytes()
    if doc["sha256"] != sha256_hex(data):
        raise DdnnError(
            f"{tensor_path} does not match the hash in {STATE_JSON} (cut, damaged or replaced): "
            f"{START_OVER}"
        )
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise DdnnError(f"{tensor_path} is not a safetensors file: {START_OVER}") from exc
    bad = first_non_finite(tensors)
    if bad is not None:
        raise DdnnError(
            f"{tensor_path}: {bad} holds NaN or infinite values (the run diverged): "
            f"{START_OVER}, with a lower learning rate"
        )
    return doc, tensors


def load_train_state(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler; returns the saved info (epoch, best, ...)."""
    doc, tensors = _read_state(folder)
    try:
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
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DdnnError(
            f"{folder / STATE_TENSORS} does not fit this run's model or optimizer ({reason}): "
            f"{START_OVER}"
        ) from exc
    return dict(doc["info"])
