"""Data in the forms users have: tensors of any dtype, numpy arrays, datasets, data loaders.

:func:`as_tensors` turns what :func:`pvae.log_likelihood`, :func:`pvae.estimate_elbo` and
``fit``'s ``held_out`` take into the tuple of tensors passed to ``model(*batch)``; a
``torch.utils.data.Dataset`` or ``DataLoader`` is read once into memory (held-out sets
usually fit). :func:`read_training_data` keeps what ``fit`` trains on where it is: tensors
(the fast path: a minibatch is one gather), a map-style ``Dataset`` read by index
(:class:`DatasetBatches`, e.g. ``ImageFolder`` with a transform: images are loaded as
minibatches need them) or a ``DataLoader`` iterated once per epoch (:class:`LoaderBatches`,
iterable datasets larger than memory included); :mod:`pvae.infer.training_sources` makes
each of these a source of minibatches for the training loop.

:func:`as_model_dtype` puts the observed data (the first tensor; labels stay integers) in the
model's floating dtype where that keeps their meaning: floating data of any precision (numpy's
float64 included), booleans and integer 0/1 tables; other integers (8-bit images pass ``fit`` a
``transform``), complex numbers and text are refused with what to do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

_READ_CHUNK = 1024


def _tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OUSVM":  # objects, text, bytes, records, dates
            raise ValueError(
                f"{name} is a numpy array of {value.dtype} values: pvae models numbers; drop "
                "the text columns and convert, e.g. np.asarray(x, dtype=np.float32)"
            )
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
    return tuple(
        _tensor(t if isinstance(t, (torch.Tensor, np.ndarray)) else torch.as_tensor(t), name)
        for t in batch
    )


def as_tensors(data, name: str = "data") -> tuple[torch.Tensor, ...]:
    """``data`` as the tuple of tensors passed to ``model(*batch)``: a tensor becomes (x,).

    Example::

        >>> len(as_tensors(np.zeros((3, 2)))), len(as_tensors((torch.zeros(3), torch.ones(3))))
        (1, 2)
    """
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    if isinstance(data, DataLoader):
        # Iterating draws the loader's base seed from torch's generator: reading the data
        # must not shift the random numbers of what follows.
        with torch.random.fork_rng(devices=[]):
            batches = [_collated(batch, name) for batch in data]
        return tuple(torch.cat(parts) for parts in zip(*batches, strict=True))
    if isinstance(data, Dataset):
        return DatasetBatches(data, name).read_all()
    if isinstance(data, (tuple, list)):
        return tuple(_tensor(t, f"{name}[{i}]") for i, t in enumerate(data))
    return (_tensor(data, name),)


def read_training_data(data, name: str = "data"):
    """What ``fit`` trains on, left where it is: a tuple of tensors, a
    :class:`DatasetBatches` or a :class:`LoaderBatches`."""
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


def as_model_dtype(
    tensors: tuple[torch.Tensor, ...], dtype: torch.dtype | None, name: str = "data"
) -> tuple[torch.Tensor, ...]:
    """``tensors`` with the first, the data the model observes, in its floating ``dtype``.

    Floating data of any precision, booleans and integer tables of 0/1 values are converted
    (no copy when the dtype is right already); labels and the other tensors stay as they are.
    Other integers, complex numbers, and values too large for ``dtype`` raise a ``ValueError``
    that says what to do: 8-bit images are scaled, ``x.float() / 255``, or kept 8-bit in
    memory with ``fit``'s ``transform``, whose output is converted instead. With ``dtype``
    None (a model without parameters) floating data stay as given, the others take torch's
    default dtype.

    Example::

        >>> as_model_dtype((torch.tensor([[0, 1]]), torch.tensor([3])), torch.float32)
        (tensor([[0., 1.]]), tensor([3]))
        >>> as_model_dtype((torch.tensor([[0, 7]]),), torch.float32)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: data holds integers other than 0 and 1 (7 at row 0, column 1): pass ...
    """
    return (_in_dtype(tensors[0], dtype, name),) + tuple(tensors[1:])


def _in_dtype(x: torch.Tensor, dtype: torch.dtype | None, name: str) -> torch.Tensor:
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    if x.dtype == dtype:
        return x
    if x.is_complex():
        raise ValueError(
            f"{name} has complex values ({x.dtype}): pvae models real data; pass the part you "
            "mean, e.g. x.real, x.abs() or torch.view_as_real(x) (real and imaginary columns)"
        )
    if x.is_floating_point():
        largest = torch.finfo(dtype).max
        if torch.finfo(x.dtype).max > largest:
            too_large = (x.abs() > largest) & torch.isfinite(x)
            if bool(too_large.any()):
                raise ValueError(
                    f"{name} has values beyond the largest {dtype} ({largest:g}), first at "
                    f"{_where(too_large, x.shape)}: the model computes in {dtype}; rescale them"
                )
    elif x.dtype != torch.bool:
        binary = (x == 0) | (x == 1)
        if not bool(binary.all()):
            where = _where(~binary, x.shape)
            value = x.reshape(-1)[first_true(~binary)].item()
            raise ValueError(
                f"{name} holds integers other than 0 and 1 ({value} at {where}): pass "
                "floating-point data (x.float() for counts, x.float() / 255 for 8-bit "
                "images), or keep 8-bit data in memory: pass transform=lambda batch: "
                "batch.float() / 255 to fit"
            )
    return x.to(dtype)


def first_true(mask: torch.Tensor) -> int:
    """The flat index of the first True in ``mask`` (which has one).

    Example::

        >>> first_true(torch.tensor([[False, False], [True, True]]))
        2
    """
    return int(mask.reshape(-1).to(torch.uint8).argmax())


def _where(mask: torch.Tensor, shape) -> str:
    """``row r, column c`` (or ``row r, index (...)``) of the first True in ``mask``."""
    return describe_index(np.unravel_index(first_true(mask), tuple(shape)))


def describe_index(index) -> str:
    """An index into a user's array, as they would look it up: ``row 17, column 4``.

    Example::

        >>> describe_index((17, 4)), describe_index((2, 0, 5, 5)), describe_index((3,))
        ('row 17, column 4', 'row 2, index (0, 5, 5)', 'row 3')
    """
    row, *rest = (int(i) for i in index)
    if not rest:
        return f"row {row}"
    return f"row {row}, column {rest[0]}" if len(rest) == 1 else f"row {row}, index {tuple(rest)}"


def rows_on(tensors, start: int, end: int, device) -> tuple[torch.Tensor, ...]:
    """Rows start:end of every tensor, on ``device`` (a no-op for data already there)."""
    return tuple(t[start:end].to(device) for t in tensors)
