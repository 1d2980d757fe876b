"""Sweep files: a grid of candidate designs derived from one base config, trained into run
folders, resumable.

```toml
[sweep]
base = "ddnn"            # preset or config file the candidates start from
out = "runs/sweep"       # optional; default: a folder named after the sweep file, beside it

[train]                  # overrides of the base's [train]; epochs must be stated
epochs = 4

[grid]                   # every combination is one candidate
device_depth = [1, 2]    # conv layers on the device = the cut position in the stack
filters = [16, 32]       # filters of every device layer
binarized = [true, false]  # bconv (1-bit weights and features) or float conv on the device
server_depth = [2]       # optional: conv layers in the server section (the base's, cut or
                         # extended by repeating its last layer)
```

A candidate is trained into `<out>/<name>`, its name spelling out its grid values. A candidate
whose folder holds a finished run (metrics.json, written last by the trainer) is skipped; one
interrupted mid-training is resumed from its last epoch; so re-running an interrupted sweep
trains only what is left.
"""

from __future__ import annotations

import copy
import itertools
import logging
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ddnn.config import from_dict
from ddnn.errors import DdnnError
from ddnn.model.presets import load_config_dict, model_spec_from_dict
from ddnn.train import trainer
from ddnn.train.config import Experiment, TrainConfig
from ddnn.train.state import STATE_TENSORS

log = logging.getLogger(__name__)

GRID_KEYS = ("device_depth", "filters", "binarized", "server_depth")
_POOLED = 2  # device layers that halve the image (more would shrink a 28x28 view to nothing)


@dataclass(frozen=True)
class Candidate:
    name: str
    values: dict[str, Any]  # its grid values
    experiment: Experiment
    run_dir: Path

    @property
    def finished(self) -> bool:
        return (self.run_dir / trainer.REPORT_FILE).is_file()


def is_sweep_file(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix == ".toml" and p.is_file()


def read_sweep(path: str | Path) -> list[Candidate]:
    """The candidates of a sweep file, checked (a wrong key or value names the file)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DdnnError(f"sweep file {path}: {exc}") from exc
    unknown = sorted(set(doc) - {"sweep", "train", "grid"})
    if unknown or "sweep" not in doc or "grid" not in doc:
        raise DdnnError(
            f"sweep file {path}: needs [sweep] and [grid] tables (and [train]); "
            f"unknown: {unknown or 'none'}"
        )
    head, train, grid = doc["sweep"], doc.get("train", {}), doc["grid"]
    if "base" not in head or not set(head) <= {"base", "out"}:
        raise DdnnError(f"sweep file {path}: [sweep] takes base (required) and out")
    if "epochs" not in train:
        raise DdnnError(f"sweep file {path}: state the epochs to train in [train] epochs = N")
    bad = sorted(set(grid) - set(GRID_KEYS))
    if bad:
        raise DdnnError(f"sweep file {path}: unknown grid key(s) {bad}; valid: {GRID_KEYS}")
    out = Path(head.get("out") or path.with_suffix(""))
    base = load_config_dict(str(head["base"]))
    axes = {k: _axis(path, k, grid[k]) for k in GRID_KEYS if k in grid}
    candidates = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        name = candidate_name(values, int(train["epochs"]))
        exp = _experiment(base, values, train, f"sweep file {path} candidate {name}")
        candidates.append(Candidate(name, values, exp, out / name))
    return candidates


def _axis(path: Path, key: str, values: Any) -> list[Any]:
    values = values if isinstance(values, list) else [values]
    kind = bool if key == "binarized" else int
    for v in values:
        if not isinstance(v, kind) or (kind is int and (isinstance(v, bool) or v < 1)):
            want = "true or false" if kind is bool else "positive integers"
            raise DdnnError(f"sweep file {path}: [grid] {key} takes {want}, got {v!r}")
    return values


def candidate_name(values: dict[str, Any], epochs: int) -> str:
    """d2-f16-bin-s2-e4: the grid values, so a folder says what it holds."""
    parts = []
    if "device_depth" in values:
        parts.append(f"d{values['device_depth']}")
    if "filters" in values:
        parts.append(f"f{values['filters']}")
    if "binarized" in values:
        parts.append("bin" if values["binarized"] else "float")
    if "server_depth" in values:
        parts.append(f"s{values['server_depth']}")
    return "-".join([*parts, f"e{epochs}"])


def _experiment(
    base: dict[str, Any], values: dict[str, Any], train: dict[str, Any], where: str
) -> Experiment:
    model = copy.deepcopy(base["model"])
    sections = model["sections"]
    if sections[0].get("tier") != "device" or len(sections) != 2 or model.get("devices", 1) != 1:
        raise DdnnError(
            f"{where}: the base must have one device, a device section and one server section"
        )
    device, server = sections
    old = device.get("layers", [])
    binarized = values.get("binarized", bool(old) and old[0].get("type") == "bconv")
    depth = values.get("device_depth", len(old))
    filters = values.get("filters")
    layers = []
    for i in range(depth):
        src = old[min(i, len(old) - 1)] if old else {"out": 16}
        layer = {"type": "bconv" if binarized else "conv", "out": filters or src.get("out", 16)}
        if i < _POOLED:
            layer["pool"] = 2
        layers.append(layer)
    device["layers"] = layers
    exit_table = device.setdefault("exit", {})
    head = {"type": "blinear", "activation": "none"} if binarized else {
        "type": "linear", "activation": "none", "batch_norm": False,
    }  # fmt: skip
    exit_table["layers"] = [head]
    if "server_depth" in values:
        up = server.get("layers", [])
        n = values["server_depth"]
        server["layers"] = [
            {k: v for k, v in up[min(i, len(up) - 1)].items() if i < len(up) or k != "pool"}
            for i in range(n)
        ]
    model["name"] = f"{model['name']}-{candidate_name(values, int(train['epochs']))}"[:64]
    spec = model_spec_from_dict(model)
    cfg = from_dict(TrainConfig, {**base.get("train", {}), **train}, f"{where} [train]")
    cfg.validate()
    return Experiment(spec, replace(cfg))


def train_candidates(candidates: list[Candidate], progress: bool = False) -> list[Path]:
    """Train every candidate not finished yet (resuming an interrupted one); returns the run
    folders of all of them."""
    for i, c in enumerate(candidates, 1):
        if c.finished:
            log.info("candidate %d/%d %s: trained already", i, len(candidates), c.name)
            continue
        resume = (c.run_dir / STATE_TENSORS).is_file()
        log.warning(
            "candidate %d/%d %s: %s", i, len(candidates), c.name,
            "resuming" if resume else "training",
        )  # fmt: skip
        trainer.train_experiment(
            c.experiment, c.run_dir, resume=resume, progress=progress, overwrite=not resume
        )
    return [c.run_dir for c in candidates]
