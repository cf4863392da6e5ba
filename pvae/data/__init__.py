"""Datasets (loaders of image data) and their preparation for a likelihood (binarization)."""

from pvae.data.datasets import (
    DATASETS,
    FASHION_MNIST_DIR,
    IDX_DTYPES,
    ImageData,
    default_data_dir,
    default_fashion_mnist_dir,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    load_offline_mnist,
    read_idx,
    stratified_split,
)
from pvae.data.transforms import (
    DATA_FORMS,
    HELD_OUT_SEED,
    DynamicBinarization,
    binarize,
    held_out_data,
    train_transform,
)

__all__ = [
    "DATA_FORMS",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "HELD_OUT_SEED",
    "IDX_DTYPES",
    "DynamicBinarization",
    "ImageData",
    "binarize",
    "default_data_dir",
    "held_out_data",
    "default_fashion_mnist_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_offline_mnist",
    "read_idx",
    "stratified_split",
    "train_transform",
]
