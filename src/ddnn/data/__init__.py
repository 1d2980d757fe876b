"""Datasets: IDX files (MNIST, Fashion-MNIST), scikit-learn digits, generated data, your own image
folders and .npz files (colour, any size, multi-view); where a run's data came from."""

from ddnn.data import images as _images  # noqa: F401 - registers "folder" and "npz"
