"""What a model's exits and sections emit, as every tier and engine must read it.

These are facts of the model, not of its evaluation: the runtime, the export engines and the
store use them, so they live here, below `evaluate/`, and nothing that serves a model imports
evaluation or dataset code to learn them.
"""

from __future__ import annotations

import math

import numpy as np

from ddnn.model.hierarchy import HierarchicalModel, Section
from ddnn.nn.binary import BinarySign

OTHER = -1  # prediction of a Big-Little exit that says "not one of my classes"


def class_map(model: HierarchicalModel, name: str) -> np.ndarray | None:
    """Exit class index -> dataset class for a Big-Little exit (last index is "other")."""
    exit_spec = model.spec.section(name).exit
    if exit_spec is None or exit_spec.classes is None:
        return None
    return np.array([*exit_spec.classes, OTHER], dtype=np.int64)


def binary_output(section: Section) -> bool:
    """Whether a section's features are +-1 (its body ends in a binary activation): they then
    travel packed, 1 bit a value."""
    last = list(section.body.modules())[-1] if len(section.body) else None
    return isinstance(last, BinarySign)


def payload_bytes(section: Section) -> int:
    """Bytes of one sample of a section's output features on the wire."""
    n = math.prod(section.out_shape)
    return math.ceil(n / 8) if binary_output(section) else 4 * n
