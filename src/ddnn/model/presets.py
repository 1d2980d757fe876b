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
from ddnn.model.shapes import LAYER_FIELDS, layer_where, refuse_unused_fields
from ddnn.model.spec import LayerSpec, ModelSpec

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
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DdnnError(f"config file {path}: cannot read it: {exc.strerror}") from exc
    elif name_or_path in preset_names():
        raw = (_PRESETS / f"{name_or_path}.toml").read_bytes()
    else:
        raise DdnnError(
            f"unknown preset {name_or_path!r}; valid: {', '.join(preset_names())} "
            "(or the path of a .toml config)"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DdnnError(
            f"{name_or_path}: not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); "
            "save the config as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DdnnError(f"{name_or_path}: invalid TOML: {exc}") from exc
    if "model" not in data:
        raise DdnnError(f"{name_or_path}: no [model] table")
    return data


def model_spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    """A [model] table -> its spec, checked as far as it can be before the dataset is known."""
    _refuse_unused_keys(data)
    spec = from_dict(ModelSpec, data, "model")
    spec.validate()
    return spec


def _refuse_unused_keys(data: Any) -> None:
    """A key written in a layer that its type does not read, even at its default value: the
    spec's own check sees only values away from the defaults (`activation = "relu"` on a bconv
    looks like no activation at all)."""
    known = set(LayerSpec.__dataclass_fields__)
    sections = data.get("sections") if isinstance(data, dict) else None
    for section in sections if isinstance(sections, list) else ():
        if not isinstance(section, dict):
            continue
        exit_table = section.get("exit")
        exit_layers = exit_table.get("layers") if isinstance(exit_table, dict) else None
        stacks = {False: section.get("layers"), True: exit_layers}
        for is_exit, layers in stacks.items():
            for i, layer in enumerate(layers if isinstance(layers, list) else ()):
                kind = layer.get("type") if isinstance(layer, dict) else None
                if not isinstance(kind, str) or kind not in LAYER_FIELDS:
                    continue  # reported by the loader or the spec's own check
                where = layer_where(data.get("name"), section.get("name"), is_exit, i, kind)
                refuse_unused_fields(where, kind, [k for k in layer if k in known])
