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
from pvae.data.transforms import (
    DATA_FORMS,
    HELD_OUT_SEED,
    DynamicBinarization,
    binarize,
    held_out_data,
    train_transform,
)
from pvae.data.user_data import load_user_data

__all__ = [
    "ArrayInfo",
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
    "load_array",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_offline_mnist",
    "load_user_data",
    "read_idx",
    "read_image_folder",
    "stratified_split",
    "train_transform",
]
