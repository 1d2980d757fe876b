"""Where a run's data came from, stored in its spec.json, so later commands need no data flags.

The path is stored absolute: `ddnn evaluate RUN` runs from any folder. A folder moved since
training is one clear error naming the path and `--data-dir`, the flag that points elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ddnn.config import from_dict, to_dict
from ddnn.data.datasets import Dataset, create_dataset
from ddnn.errors import DdnnError


@dataclass(frozen=True)
class DataSource:
    """The dataset name, its files (absolute; None for built-in data), the image size it was
    resized to (None: as stored) and the seed of the validation and test carves."""

    dataset: str
    path: str | None = None
    image_size: tuple[int, int] | None = None
    seed: int = 0

    @classmethod
    def of(
        cls,
        dataset: str,
        path: str | Path | None = None,
        image_size: tuple[int, int] | list[int] | None = None,
        seed: int = 0,
    ) -> DataSource:
        size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        return cls(dataset, str(Path(path).resolve()) if path else None, size, int(seed))

    def to_dict(self) -> dict[str, Any]:
        return dict(to_dict(self))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DataSource:
        return from_dict(cls, doc, "data")

    def overridden(self, dataset: str | None = None, data_dir: str | None = None) -> DataSource:
        """This source with the command line's --dataset / --data-dir, when given."""
        src = self if dataset is None or dataset == self.dataset else DataSource(dataset)
        return src if data_dir is None else replace(src, path=str(Path(data_dir).resolve()))

    def load(self, val_fraction: float = 0.1) -> Dataset:
        """The dataset, split as in training; a recorded path that is gone is one clear line."""
        if self.path is not None and not Path(self.path).exists():
            raise DdnnError(
                f"the {self.dataset} data this model was trained on, {self.path}, is not there "
                "(moved or deleted); pass --data-dir to say where it is now"
            )
        return create_dataset(
            self.dataset, self.path, self.seed, val_fraction, image_size=self.image_size
        )
