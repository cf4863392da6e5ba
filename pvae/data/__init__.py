"""Datasets (MNIST, Fashion-MNIST), users' own files (load_array) and their preparation for a
likelihood (binarization)."""

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
from pvae.data.files import ArrayInfo, load_array
from pvae.data.image_folder import read_image_folder
from pvae.data.transforms import HELD_OUT_SEED, DynamicBinarization, binarize

__all__ = [
    "ArrayInfo",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "HELD_OUT_SEED",
    "IDX_DTYPES",
    "DynamicBinarization",
    "ImageData",
    "binarize",
    "default_data_dir",
    "default_fashion_mnist_dir",
    "load_array",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_offline_mnist",
    "read_idx",
    "read_image_folder",
    "stratified_split",
]
