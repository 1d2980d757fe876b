"""A model spec fitted to a dataset's input: classes, channels, height and width, views.

Layers infer their sizes from the input (nn/blocks.py), so a preset written for 28x28 grey
images runs on 32x32 colour ones; what cannot fit (a pooling that leaves nothing, a crop larger
than the image) is one DdnnError here, before any training or file writing starts.
"""

from __future__ import annotations

from ddnn.data.datasets import Dataset
from ddnn.errors import DdnnError
from ddnn.model.hierarchy import HierarchicalModel
from ddnn.model.spec import ModelSpec


def fit_to_data(spec: ModelSpec, data: Dataset) -> ModelSpec:
    """`spec` with the dataset's facts filled in, checked by building it once."""
    mean, std = data.normalization()
    fitted = spec.with_dataset(
        data.num_classes, data.input_shape, data.class_names, mean, std, views=data.views
    )
    try:
        HierarchicalModel(fitted)
    except (RuntimeError, ValueError) as exc:
        c, h, w = data.input_shape
        first = str(exc).splitlines()[0]
        raise DdnnError(
            f"model {spec.name!r} cannot take {c}x{h}x{w} inputs ({first}); pick a larger "
            "--image-size or a model with fewer poolings"
        ) from exc
    return fitted
