"""Presets are data: TOML files in presets/, one per model family, each with [model] and [train].

A user's own TOML file in the same format works wherever a preset name does.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from ddnn.config import from_dict
from ddnn.errors import DdnnError
from ddnn.model.spec import ModelSpec

_PRESETS = resources.files("ddnn.model") / "presets"


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml") for p in _PRESETS.iterdir() if p.name.endswith(".toml")
    )


def load_config_dict(name_or_path: str) -> dict[str, Any]:
    """A preset name or a TOML file path -> its parsed tables."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise DdnnError(f"config file {path} not found")
        text = path.read_text()
    elif name_or_path in preset_names():
        text = (_PRESETS / f"{name_or_path}.toml").read_text()
    else:
        raise DdnnError(
            f"unknown preset {name_or_path!r}; valid: {', '.join(preset_names())} "
            "(or the path of a .toml config)"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DdnnError(f"{name_or_path}: invalid TOML: {exc}") from exc
    if "model" not in data:
        raise DdnnError(f"{name_or_path}: no [model] table")
    return data


def model_spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    return from_dict(ModelSpec, data, "model")
