"""What :func:`pvae.fit` trains on, behind one protocol: :class:`TrainingSource`.

Each kind of data is one implementation: tensors and arrays in memory
(:class:`TensorSource`, the fast path: a minibatch is one gather, on the device or copied
from the host), a map-style ``Dataset`` read item by item (:class:`DatasetSource`) and a
``DataLoader`` with its own batches, order and workers (:class:`LoaderSource`). A source
knows its size (the data plate's scale), gives its first minibatch (for the checks and the
first trace), what the checks need, and one epoch's minibatches as the model sees them
(converted to its dtype, transformed, on the training device), in fit's order from a
:class:`~pvae.infer.training_state.Position`: an epoch interrupted midway continues where
it stopped, except a ``DataLoader``'s (its order is its own), which starts again. Several
named streams are one source per stream (:mod:`pvae.infer.training_streams`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from pvae.infer.batches import DeviceBatches, HostBatches
from pvae.infer.checks import check_data, model_dtype
from pvae.infer.device import resolve_device
from pvae.infer.distributed import Cluster
from pvae.infer.sources import (
    DatasetBatches,
    LoaderBatches,
    as_model_dtype,
    rows_on,
)
from pvae.infer.training_state import Position

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Minibatch:
    """A step's minibatch: this rank's rows as the model sees them (None: its share of the
    global minibatch is empty) and the size the data plate is scaled to, so that the losses
    of all ranks sum to the global minibatch's estimate."""

    rows: Batch | None
    plate_size: float


@dataclass(frozen=True)
class RowsToCheck:
    """What fit checks against the supports of the model's observed sites: the rows, and
    the transform and dtype that make them what the model sees (None when they are already)."""

    rows: Batch
    transform: Callable | None
    dtype: torch.dtype | None


class TrainingSource(Protocol):
    device: torch.device  # where the steps run
    num_data: int  # the data plate's size
    first: Batch  # the first minibatch as the model sees it
    owner_rows: torch.Tensor | None  # what the model's owner checks (pvae.VAE.check_data)
    rows_to_check: RowsToCheck

    def new_position(self, seed: int) -> Position:
        """The start of training, with the minibatch order's ``seed``."""

    def steps_per_epoch(self) -> int | None:
        """None when unknown (an iterable dataset)."""

    def epoch(self, position: Position) -> Iterator[Minibatch]:
        """The rest of the current epoch from ``position`` (all of it between epochs),
        moving ``position`` on as each minibatch is handed out."""


def training_source(data, model, guide, settings, device: torch.device, cluster: Cluster):
    """The source of its kind for ``data`` as :func:`read_training_data` gives it;
    ``settings`` are fit's (``batch_size``, ``transform``, ``num_data``)."""
    kind = LoaderSource if isinstance(data, LoaderBatches) else DatasetSource
    kind = TensorSource if isinstance(data, tuple) else kind
    return kind(data, model, guide, settings, device, cluster)


def training_device(data, device) -> torch.device:
    """Where the steps run: the device of data in memory unless ``device`` says otherwise;
    a Dataset or DataLoader is read on the host."""
    data_device = data[0].device if isinstance(data, tuple) else torch.device("cpu")
    device = data_device if device is None else resolve_device(device)
    if device != data_device and data_device.type != "cpu":
        raise ValueError(
            f"the data are on {data_device} and device is {device}: training streams "
            "minibatches from host memory only; move the data to the CPU or to the device"
        )
    return device


class _Indexed:
    """Minibatches gathered by index (``self.rows``: ``get`` and ``prefetch``), in an order
    drawn from the seed and the epoch; each rank takes its share of every minibatch."""

    def new_position(self, seed: int) -> Position:
        return Position(seed, self.device, self.order_device)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_data / self.batch_size)

    def epoch(self, position: Position) -> Iterator[Minibatch]:
        if not position.mid_epoch:
            position.start_epoch(
                _permutation(self.num_data, position.seed, position.epoch, self.order_device)
            )
        size, order = self.batch_size, position.order
        while position.next_start < self.num_data:
            start = position.next_start
            global_indices = order[start : start + size]
            indices = self.cluster.shard(global_indices)
            rows = self.prepare(self.rows.get(indices)) if indices.numel() > 0 else None
            position.took(size)
            yield Minibatch(rows, self.num_data * indices.numel() / global_indices.numel())
            self.rows.prefetch(self.cluster.shard(order[start + size : start + 2 * size]))


class TensorSource(_Indexed):
    """Tensors in memory: on the training device, or on the host and copied minibatch by
    minibatch (:class:`~pvae.infer.batches.HostBatches`). Every row is checked."""

    def __init__(self, tensors: Batch, model, guide, settings, device, cluster: Cluster):
        self.device, self.cluster, self.transform = device, cluster, settings.transform
        self.batch_size = settings.batch_size
        _check_tensors(tensors, self.transform)
        # Data the model observes as given are held in its dtype (float64 from numpy, bools,
        # 0/1 integers); with a transform they stay as they are (8-bit) until each minibatch.
        self.dtype = model_dtype(model, guide, rows_on(tensors, 0, 2, device))
        if self.transform is None:
            tensors = as_model_dtype(tensors, self.dtype)
        self.tensors, self.num_data = tensors, tensors[0].shape[0]
        if device == tensors[0].device:
            self.rows = DeviceBatches(tensors)
        else:
            self.rows = HostBatches(tensors, device, self.batch_size)
        self.order_device = self.rows.tensors[0].device  # where the rows are gathered
        self.first = self.prepare(tuple(t[: self.batch_size].to(device) for t in tensors))
        self.owner_rows = tensors[0] if self.transform is None else None
        self.rows_to_check = RowsToCheck(tensors, self.transform, self.dtype)

    def prepare(self, batch: Batch) -> Batch:
        return _model_sees(_transformed(batch, self.transform), self.dtype)


class _Streamed:
    """Minibatches read on the host, converted there and copied to the device; checked on
    the first minibatch (the data may not fit in memory)."""

    def _start(self, first_rows: Batch, model, guide, settings) -> None:
        self.transform, self.batch_size = settings.transform, settings.batch_size
        self.dtype = model_dtype(model, guide, first_rows)
        self.first = self.prepare(first_rows)
        check_data(self.first[0], "the first minibatch")
        self.owner_rows = self.first[0]
        self.rows_to_check = RowsToCheck(self.first, None, None)

    def prepare(self, batch: Batch) -> Batch:
        if self.transform is None:  # 0/1 integers are checked on the host
            batch = as_model_dtype(batch, self.dtype, "a minibatch of data")
        batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
        return _model_sees(_transformed(batch, self.transform), self.dtype)


class DatasetSource(_Streamed, _Indexed):
    """A map-style ``Dataset``, read item by item in fit's own order (so resuming is exact)."""

    def __init__(self, dataset: DatasetBatches, model, guide, settings, device, cluster):
        _refuse_distributed(cluster)
        self.device, self.cluster, self.num_data = device, cluster, dataset.num_data
        self.rows, self.order_device = dataset, torch.device("cpu")
        first_rows = dataset.get(torch.arange(min(settings.batch_size, self.num_data)))
        self._start(first_rows, model, guide, settings)


class LoaderSource(_Streamed):
    """A ``DataLoader``'s own minibatches (its batch size, order and workers), once per
    epoch; an epoch interrupted midway starts again from its beginning when resumed."""

    def __init__(self, loader: LoaderBatches, model, guide, settings, device, cluster):
        self.num_data = _loader_size(loader, settings.num_data)
        _refuse_distributed(cluster)
        self.device, self.loader = device, loader
        self._start(next(iter(loader.epoch())), model, guide, settings)

    def new_position(self, seed: int) -> Position:
        return Position(seed, self.device, torch.device("cpu"))

    def steps_per_epoch(self) -> int | None:
        try:
            return len(self.loader.loader)
        except TypeError:  # an iterable dataset: as many as it yields
            return None

    def epoch(self, position: Position) -> Iterator[Minibatch]:
        position.start_epoch(None)
        for batch in self.loader.epoch():
            yield Minibatch(self.prepare(batch), self.num_data)


def _refuse_distributed(cluster: Cluster) -> None:
    if cluster.active:
        raise ValueError(
            "distributed training reads in-memory data only: pass tensors (each rank "
            "takes its share of every minibatch)"
        )


def _loader_size(loader: LoaderBatches, num_data: int | None) -> int:
    """The number of datapoints the minibatch ELBO is scaled to (the data plate's size)."""
    size = num_data if num_data is not None else loader.dataset_size()
    if size is None:
        raise ValueError(
            "data is a DataLoader over a dataset without len(): pass num_data= (the number "
            "of datapoints in an epoch), to which each minibatch's ELBO is scaled"
        )
    return size


def _check_tensors(tensors: Batch, transform) -> None:
    # Of any dtype: data the model observes as given are converted to its dtype (or refused),
    # 8-bit images and the like are fine with a transform (their transformed rows are checked).
    check_data(tensors[0], floating=False)
    if transform is not None and hasattr(transform, "check_data"):
        transform.check_data(tensors[0])
    for i, tensor in enumerate(tensors[1:], start=1):
        if tensor.shape[0] != tensors[0].shape[0]:
            raise ValueError(
                f"data[{i}] has {tensor.shape[0]} rows but data[0] has {tensors[0].shape[0]}: "
                "every tensor in data must have one row per datapoint"
            )
        if tensor.device != tensors[0].device:
            raise ValueError(f"data[{i}] is on {tensor.device} but data[0] on {tensors[0].device}")


def _transformed(batch: Batch, transform) -> Batch:
    return batch if transform is None else (transform(batch[0]),) + batch[1:]


def _model_sees(batch: Batch, dtype: torch.dtype | None) -> Batch:
    # In the model's dtype after the transform (8-bit data stay 8-bit until here); a no-op
    # for data converted already.
    return (batch[0].to(dtype or batch[0].dtype),) + batch[1:]


def _permutation(num_data: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The minibatch order of an epoch: a function of the seed and the epoch alone.

    Drawn on the CPU from its own generator, so every rank gets the same order and the
    order does not depend on the device or on what else drew random numbers.
    """
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(num_data, generator=generator, device="cpu").to(device)
