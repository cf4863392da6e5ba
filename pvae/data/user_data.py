"""A user's own file or folder as train and held-out rows, as ``pvae train`` reads it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from pvae.data.datasets import ImageData
from pvae.data.files import load_array
from pvae.data.transforms import holds_bytes

_EXACT_IN_FLOAT32 = 2**24


def read_rows(path: str | Path, image_size: Sequence[int] | None = None):
    """:func:`pvae.data.load_array`'s tensor, one flat row per example, and its description.

    8-bit images stay ``uint8`` (:func:`pvae.data.transforms.holds_bytes`); any other table
    of integers or booleans is numbers, as a CSV file's are: float32, where every value is
    exact (up to 2**24).
    """
    resize = tuple(image_size) if image_size is not None else None
    x, info = load_array(path, resize=resize) if resize else load_array(path)
    x = x.reshape(x.shape[0], -1)
    if x.is_floating_point() or holds_bytes(x):
        return x, info
    largest = int(x.abs().max()) if x.numel() and x.dtype != torch.bool else 0
    if largest > _EXACT_IN_FLOAT32:
        raise ValueError(
            f"{path} holds integers up to {largest}, beyond 2**24, which float32 (what the "
            "model computes in) cannot hold exactly: rescale them, e.g. to counts in thousands"
        )
    return x.float(), info


def load_user_data(
    path: str | Path,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    image_size: Sequence[int] | None = None,
) -> ImageData:
    """Read ``path`` (see :func:`pvae.data.load_array`) and hold out a random
    ``held_out_fraction`` of its rows (fixed by ``seed``). Rows are flattened; images stay
    8-bit for training (scaled to [0, 1] per minibatch) and are scaled once for held-out
    evaluation; ``image_shape`` is None for data that are not images.

    Example::

        >>> data = load_user_data("features.csv", held_out_fraction=0.2)  # doctest: +SKIP
        >>> data.train_x.shape, data.image_shape  # doctest: +SKIP
        (torch.Size([800, 12]), None)
    """
    x, info = read_rows(path, image_size)
    num = x.shape[0]
    num_held_out = math.ceil(held_out_fraction * num)
    if num < 2 or num_held_out >= num:
        raise ValueError(
            f"{path} has {num} rows: too few to hold out {held_out_fraction:g} of them and "
            "train on the rest; give more data or a smaller held_out_fraction"
        )
    order = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    held_out, train = x[order[:num_held_out]], x[order[num_held_out:]]
    if holds_bytes(x):
        held_out = held_out.float() / 255
    no_labels = torch.zeros(0, dtype=torch.long)
    return ImageData(
        train_x=train,
        train_y=no_labels.new_zeros(train.shape[0]),
        test_x=held_out,
        test_y=no_labels.new_zeros(num_held_out),
        name=Path(path).name,
        source=info.describe(),
        image_shape=info.image_shape,
    )
