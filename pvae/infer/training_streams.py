"""Several named data streams in one :func:`pvae.fit`: one minibatch of every stream a step.

A semi-supervised model (Kingma et al.'s M2, Pyro's ``ss_vae``) trains on labelled and
unlabelled data at once; a multi-task model on several datasets. ``fit`` takes them as a
dict, ``{"labelled": (x_l, y_l), "unlabelled": x_u}``, each value any data form fit takes
(or a :class:`Stream` with its own batch size and transform). Each step takes one
minibatch of every stream and calls model and guide once per stream with that stream's
tensors; each stream's ``"data"`` plate is scaled to that stream's size, so the summed loss
is an unbiased estimate of the whole objective, and sites outside the plate (global
latents, factors) count once per step: each stream's call weighs them by 1/(number of
streams). An epoch is one pass over the *lead* stream, the one with the most minibatches
(an iterable DataLoader's count is unknown: it leads); the other streams cycle, each in its
own seeded order, reshuffled at each pass, and carry their place from one epoch to the
next (a checkpoint keeps it, so resuming is exact; a ``DataLoader`` stream starts its pass
again each epoch).

Plain data are one unnamed stream: the same minibatches, order and numbers as ever.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from pvae.infer.checkpoint_entries import check_entries
from pvae.infer.distributed import Cluster
from pvae.infer.sources import read_training_data
from pvae.infer.training_sources import (
    Minibatch,
    TrainingSource,
    training_device,
    training_source,
)
from pvae.infer.training_state import Position


@dataclasses.dataclass(frozen=True)
class Stream:
    """One of fit's named data streams with settings of its own (None: fit's).

    Example::

        >>> streams = {
        ...     "labelled": pvae.Stream((x_l, y_l), batch_size=10),
        ...     "unlabelled": x_u,  # fit's batch_size and transform
        ... }  # doctest: +SKIP
        >>> pvae.fit(m2.model, m2.guide, streams, batch_size=100)  # doctest: +SKIP
    """

    data: Any
    batch_size: int | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    num_data: int | None = None  # a DataLoader's dataset size, as fit's ``num_data``


@contextlib.contextmanager
def named_errors(where: str | None) -> Iterator[None]:
    """A ``ValueError`` raised inside begins with ``where``, the stream's name in messages
    (``data['labelled']``); None (plain data) leaves it as it is.

    Example::

        >>> with named_errors("data['a']"):  # doctest: +ELLIPSIS
        ...     raise ValueError("batch_size must be positive")
        Traceback (most recent call last):
        ...
        ValueError: data['a']: batch_size must be positive
    """
    try:
        yield
    except ValueError as error:
        if where is None:
            raise
        raise ValueError(f"{where}: {error}") from None


def is_streams(data) -> bool:
    """Whether ``data`` are named streams (a mapping) rather than one dataset."""
    return isinstance(data, Mapping)


class StreamCursor:
    """Where a stream that does not lead stands: its pass, that pass's order and the next
    minibatch's start (the ``Position`` of a lead stream, without the epoch's figures).

    Example::

        >>> cursor = StreamCursor(seed=3, device=torch.device("cpu"))
        >>> cursor.start_epoch(torch.tensor([1, 0])); cursor.took(1)
        >>> cursor.state_dict()["next_start"]
        1
    """

    def __init__(self, seed: int, device: torch.device):
        self.seed, self.device = seed, device
        self.epoch, self.order, self.next_start = 0, None, 0  # epoch: passes completed

    def start_epoch(self, order: torch.Tensor | None) -> None:
        self.order, self.next_start = order, 0

    def took(self, batch_size: int) -> None:
        self.next_start += batch_size

    def finish_pass(self) -> None:
        self.epoch, self.order = self.epoch + 1, None

    @property
    def mid_epoch(self) -> bool:
        return self.order is not None

    def state_dict(self) -> dict[str, Any]:
        return {"passes": self.epoch, "order": self.order, "next_start": self.next_start}

    def load_state_dict(self, saved: Mapping[str, Any], num_data: int, where: str) -> None:
        check_entries(
            saved, where, {"passes": int, "order": torch.Tensor | None, "next_start": int}
        )
        order = saved["order"]
        if order is not None and (order.dtype != torch.int64 or order.shape != (num_data,)):
            raise ValueError(
                f"{where}: 'order' must be a permutation of the stream's {num_data} "
                "datapoints: resume with the same data"
            )
        if not 0 <= saved["next_start"] <= num_data or saved["passes"] < 0:
            raise ValueError(f"{where}: its place lies outside the stream's {num_data} rows")
        self.epoch, self.next_start = saved["passes"], saved["next_start"]
        self.order = None if order is None else order.to(self.device)


class Streams:
    """The training data as :class:`pvae.fit` steps through them: ``parts``, one training
    source per stream (``names[i]`` None for plain data), and each step a tuple of one
    :class:`~pvae.infer.training_sources.Minibatch` per stream.

    ``num_data`` is the streams' total (the reported bound is per datapoint of all of
    them); ``lead_size`` the lead stream's (what a saved epoch order permutes).
    """

    def __init__(self, names: tuple[str | None, ...], parts: tuple[TrainingSource, ...]):
        self.names, self.parts = names, parts
        self.device = parts[0].device
        self.num_data = sum(part.num_data for part in parts)
        self.lead = _lead(names, parts)
        self.lead_size = parts[self.lead].num_data
        self.cursors: dict[str, StreamCursor] = {}

    def where(self, index: int, name: str = "data") -> str:
        """How messages name the data of stream ``index``: ``data['labelled']``."""
        return name if self.names[index] is None else f"{name}[{self.names[index]!r}]"

    def named(self, index: int) -> str | None:
        """What :func:`named_errors` puts in front of stream ``index``'s errors (None: plain
        data, whose errors say "data" themselves)."""
        return None if self.names[index] is None else self.where(index)

    def new_position(self, seed: int) -> Position:
        """The lead stream's position; the other streams' cursors start at their first pass."""
        self.cursors = {
            name: StreamCursor(_stream_seed(seed, index), _order_device(part))
            for index, (name, part) in enumerate(zip(self.names, self.parts, strict=True))
            if index != self.lead
        }
        return self.parts[self.lead].new_position(seed)

    def steps_per_epoch(self) -> int | None:
        return self.parts[self.lead].steps_per_epoch()

    def epoch(self, position: Position) -> Iterator[tuple[Minibatch, ...]]:
        """The rest of the epoch: the lead stream's minibatches, each with the next one of
        every other stream."""
        others = {
            index: _cycle(part, self.cursors[self.names[index]], self.where(index))
            for index, part in enumerate(self.parts)
            if index != self.lead
        }
        for lead_minibatch in self.parts[self.lead].epoch(position):
            yield tuple(
                lead_minibatch if index == self.lead else next(others[index])
                for index in range(len(self.parts))
            )

    def state_dict(self) -> dict[str, Any] | None:
        """The checkpoint's ``streams``: the cursors of the streams that do not lead."""
        if len(self.parts) == 1:
            return None
        return {name: cursor.state_dict() for name, cursor in self.cursors.items()}

    def load_state_dict(self, saved: Mapping[str, Any] | None, source: str) -> None:
        names = sorted(self.cursors)
        if saved is None and len(self.parts) == 1:
            return
        if saved is None or sorted(saved) != names:
            theirs = "one dataset"
            if saved is not None:
                theirs = f"the streams {sorted(saved)} beside its lead"
            raise ValueError(
                f"{source} was written by a run with {theirs}, and this run has "
                f"{self._described()}: resume with the same data"
            )
        for index, name in enumerate(self.names):
            if index != self.lead:
                where = f"{source}'s streams[{name!r}]"
                self.cursors[name].load_state_dict(saved[name], self.parts[index].num_data, where)

    def _described(self) -> str:
        if len(self.parts) == 1:
            return "one dataset"
        return f"the streams {sorted(self.cursors)} beside its lead {self.names[self.lead]!r}"


@dataclasses.dataclass(frozen=True)
class ReadStream:
    """A stream as fit reads it: its name (None: plain data), its data as
    :func:`~pvae.infer.sources.read_training_data` gives them, its own settings."""

    name: str | None
    data: Any
    settings: Stream


def read_streams(data) -> tuple[ReadStream, ...]:
    """fit's ``data`` as streams, read where they are: named ones, or plain data as one."""
    if not is_streams(data):
        return (ReadStream(None, read_training_data(data), Stream(None)),)
    if not data:
        raise ValueError("data is an empty dict: give at least one named stream of data")
    read = []
    for name, value in data.items():
        where = f"data[{name!r}]"
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{where}: stream names are identifiers, e.g. 'labelled'")
        stream = value if isinstance(value, Stream) else Stream(value)
        size = stream.batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{where}: batch_size must be a positive integer, got {size!r}")
        read.append(ReadStream(name, read_training_data(stream.data, where), stream))
    return tuple(read)


def streams_device(streams: tuple[ReadStream, ...], device) -> torch.device:
    """Where the steps run: :func:`~pvae.infer.training_sources.training_device` of every
    stream, which must agree."""
    devices = [training_device(stream.data, device) for stream in streams]
    if len(set(devices)) > 1:
        shown = ", ".join(f"{s.name!r} on {d}" for s, d in zip(streams, devices, strict=True))
        raise ValueError(
            f"the streams' data are on different devices ({shown}): keep them all on one "
            "device, or all in host memory with device= where the steps run"
        )
    return devices[0]


def training_streams(
    streams: tuple[ReadStream, ...], model, guide, settings, device, cluster: Cluster
) -> Streams:
    """The :class:`Streams` fit steps through; ``settings`` are fit's (each :class:`Stream`
    may override its ``batch_size``, ``transform`` and ``num_data``)."""
    parts = []
    for stream in streams:
        own = stream.settings
        stream_settings = dataclasses.replace(
            settings,
            batch_size=own.batch_size or settings.batch_size,
            transform=own.transform or settings.transform,
            num_data=own.num_data if own.num_data is not None else settings.num_data,
        )
        with named_errors(None if stream.name is None else f"data[{stream.name!r}]"):
            part = training_source(stream.data, model, guide, stream_settings, device, cluster)
        parts.append(part)
    return Streams(tuple(stream.name for stream in streams), tuple(parts))


def _cycle(part: TrainingSource, cursor: StreamCursor, where: str) -> Iterator[Minibatch]:
    """A stream's minibatches without end: pass after pass, from where ``cursor`` stands."""
    while True:
        empty = True
        for minibatch in part.epoch(cursor):
            empty = False
            yield minibatch
        if empty and not cursor.mid_epoch:
            raise ValueError(f"{where} gave no minibatch in a whole pass: it holds no data")
        cursor.finish_pass()


def _lead(names, parts) -> int:
    """The stream with the most minibatches an epoch (an unknown count leads)."""
    unknown = [i for i, part in enumerate(parts) if part.steps_per_epoch() is None]
    if len(unknown) > 1:
        shown = ", ".join(repr(names[i]) for i in unknown)
        raise ValueError(
            f"the streams {shown} are DataLoaders over datasets without len(): an epoch is one "
            "pass over the longest stream, so at most one stream may have no length"
        )
    if unknown:
        return unknown[0]
    steps = [part.steps_per_epoch() for part in parts]
    return steps.index(max(steps))


def _order_device(part) -> torch.device:
    """Where a stream's order lives: where its rows are gathered (a DataLoader has none)."""
    return getattr(part, "order_device", torch.device("cpu"))


def _stream_seed(seed: int, index: int) -> int:
    """The order seed of the stream at ``index`` of the dict: apart from the lead's ``seed``."""
    return (seed + 7919 * (index + 1)) % 2**62
