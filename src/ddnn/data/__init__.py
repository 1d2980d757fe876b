"""Datasets: IDX files (MNIST, Fashion-MNIST), scikit-learn digits, generated data; multi-view."""
