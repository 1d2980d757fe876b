"""Training configuration, resolved from the preset's [train] table and command-line overrides and
saved beside every run."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ddnn.config import from_dict
from ddnn.errors import DdnnError
from ddnn.model.presets import load_config_dict, model_spec_from_dict
from ddnn.model.spec import ModelSpec

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step")
CALIBRATIONS = ("budget", "fraction", "accuracy")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: tuple[int, int] | None = None  # resize every image to (H, W); None: as stored
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 10
    schedule: str = "none"
    seed: int = 0
    val_fraction: float = 0.1
    device_dropout: float = 0.0  # chance a device is masked out per sample (fusion robustness)
    limit: int | None = None  # use only the first N training samples (quick runs, tests)
    # threshold calibration on the validation split at the end of training
    calibrate: str = "budget"  # budget: most local exits within `tolerance` of cloud-only accuracy
    target_fraction: float = 0.7  # for calibrate = "fraction"
    tolerance: float = 0.003  # for calibrate = "budget"

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise DdnnError(f"optimizer {self.optimizer!r}; valid: {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise DdnnError(f"schedule {self.schedule!r}; valid: {SCHEDULES}")
        if self.calibrate not in CALIBRATIONS:
            raise DdnnError(f"calibrate {self.calibrate!r}; valid: {CALIBRATIONS}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise DdnnError("epochs, batch_size and lr must be positive")
        if not 0.0 <= self.device_dropout < 1.0:
            raise DdnnError("device_dropout must be in [0, 1)")


@dataclass(frozen=True)
class Experiment:
    model: ModelSpec
    train: TrainConfig


def load_experiment(name_or_path: str, **overrides: Any) -> Experiment:
    """Preset or TOML file, with overrides (None values are ignored) applied to [train]."""
    data = load_config_dict(name_or_path)
    model = model_spec_from_dict(data["model"])
    train = from_dict(TrainConfig, data.get("train", {}), "train")
    train = replace(train, **{k: v for k, v in overrides.items() if v is not None})
    train.validate()
    return Experiment(model, train)


def resume_experiment(run_dir: str) -> Experiment:
    """The experiment an interrupted run was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise DdnnError(f"{run_dir} has no config.json: not a run folder to resume")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdnnError(
            f"{path} is not valid JSON (cut or damaged): train again into a new --out folder or "
            "with --overwrite"
        ) from exc
    if not isinstance(doc, dict) or "model" not in doc or "train" not in doc:
        raise DdnnError(f"{path} lacks the model or train table: not a run folder to resume")
    experiment = Experiment(
        from_dict(ModelSpec, doc["model"], "model"), from_dict(TrainConfig, doc["train"], "train")
    )
    experiment.train.validate()
    return experiment
