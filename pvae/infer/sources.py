"""Data in the forms users have: tensors of any dtype, numpy arrays, datasets, data loaders.

:func:`as_tensors` turns what :func:`pvae.log_likelihood`, :func:`pvae.estimate_elbo` and
``fit``'s ``held_out`` take into the tuple of tensors passed to ``model(*batch)``; a
``torch.utils.data.Dataset`` or ``DataLoader`` is read once into memory (held-out sets
usually fit). :func:`training_source` keeps what ``fit`` trains on where it is: tensors
(the fast path: a minibatch is one gather), a map-style ``Dataset`` read by index
(:class:`DatasetBatches`, e.g. ``ImageFolder`` with a transform: images are loaded as
minibatches need them) or a ``DataLoader`` iterated once per epoch (:class:`LoaderBatches`,
iterable datasets larger than memory included).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

_READ_CHUNK = 1024


def _tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)  # no copy
    if isinstance(value, torch.Tensor):
        return value
    raise ValueError(
        f"{name} must be a torch.Tensor, a numpy array, a tuple of those, a torch Dataset or a "
        f"DataLoader, got {type(value).__name__}"
    )


def _collated(items, name: str) -> tuple[torch.Tensor, ...]:
    """A dataset's items (a tensor or a tuple such as (image, label)) as a tuple of tensors."""
    batch = items if isinstance(items, (tuple, list)) else (items,)
    return tuple(_tensor(torch.as_tensor(t) if not torch.is_tensor(t) else t, name) for t in batch)


def as_tensors(data, name: str = "data") -> tuple[torch.Tensor, ...]:
    """``data`` as the tuple of tensors passed to ``model(*batch)``: a tensor becomes (x,).

    Example::

        >>> len(as_tensors(np.zeros((3, 2)))), len(as_tensors((torch.zeros(3), torch.ones(3))))
        (1, 2)
    """
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    if isinstance(data, DataLoader):
        batches = [_collated(batch, name) for batch in data]
        return tuple(torch.cat(parts) for parts in zip(*batches, strict=True))
    if isinstance(data, Dataset):
        return DatasetBatches(data, name).read_all()
    if isinstance(data, (tuple, list)):
        return tuple(_tensor(t, f"{name}[{i}]") for i, t in enumerate(data))
    return (_tensor(data, name),)


def training_source(data, name: str = "data"):
    """What ``fit`` trains on: a tuple of tensors, a :class:`DatasetBatches` or a
    :class:`LoaderBatches`."""
    if isinstance(data, DataLoader):
        return LoaderBatches(data)
    if isinstance(data, Dataset) and not isinstance(data, TensorDataset):
        return DatasetBatches(data, name)
    return as_tensors(data, name)


class DatasetBatches:
    """Minibatches of a map-style dataset, read item by item and collated on the host.

    Example::

        >>> batches = DatasetBatches(TensorDataset(torch.arange(3.0)), "data")
        >>> batches.get(torch.tensor([2, 0]))
        (tensor([2., 0.]),)
    """

    def __init__(self, dataset, name: str):
        try:
            self.num_data = len(dataset)
        except TypeError:
            raise ValueError(
                f"{name}: a {type(dataset).__name__} without len() cannot be indexed by "
                "minibatch: wrap it in a torch.utils.data.DataLoader and pass num_data="
            ) from None
        self.dataset, self.name = dataset, name
        self.tensors = None  # not in memory: fit's order lives on the host

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        items = [self.dataset[i] for i in indices.tolist()]
        return _collated(default_collate(items), self.name)

    def prefetch(self, indices: torch.Tensor) -> None:
        """Items are read when the step needs them (a DataLoader's workers read ahead)."""

    def read_all(self) -> tuple[torch.Tensor, ...]:
        parts = [
            self.get(torch.arange(start, min(start + _READ_CHUNK, self.num_data)))
            for start in range(0, self.num_data, _READ_CHUNK)
        ]
        return tuple(torch.cat(columns) for columns in zip(*parts, strict=True))


class LoaderBatches:
    """A ``DataLoader``'s own minibatches (its batch size, order and workers), once per epoch.

    Example::

        >>> loader = DataLoader(TensorDataset(torch.zeros(5, 2)), batch_size=2)
        >>> [tuple(b[0].shape) for b in LoaderBatches(loader).epoch()]
        [(2, 2), (2, 2), (1, 2)]
    """

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def dataset_size(self) -> int | None:
        try:
            return len(self.loader.dataset)
        except TypeError:  # an iterable dataset without len()
            return None

    def epoch(self):
        for batch in self.loader:
            yield _collated(batch, "data")


def rows_on(tensors, start: int, end: int, device) -> tuple[torch.Tensor, ...]:
    """Rows start:end of every tensor, on ``device`` (a no-op for data already there)."""
    return tuple(t[start:end].to(device) for t in tensors)
