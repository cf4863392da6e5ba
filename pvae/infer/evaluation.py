"""The front-end every estimator of a trained model shares: data, device, processes and seed.

:func:`pvae.log_likelihood`, :func:`pvae.estimate_elbo`, :func:`pvae.ais` and :func:`pvae.bdmc`
take ``(model, guide, data, ..., seed, distributed, device, progress)`` and prepare them in one
place, :func:`evaluating`, so that all four accept the same things and refuse the same things
with the same message:

- ``data``: a tensor, a numpy array, a tuple of those (``model(*batch)``), a ``Dataset`` or a
  ``DataLoader`` (:func:`pvae.infer.sources.as_tensors`), checked on every row and converted to
  the model's dtype (:func:`pvae.infer.checks.check_model_data`);
- ``device``: where model and guide run (:func:`pvae.infer.device.resolve_device`; default:
  the data's), data kept in host memory copied there a chunk at a time;
- ``distributed``: the process group under torchrun (:func:`pvae.infer.distributed.connect`);
  each process takes a contiguous share of the data and every process gets the whole result;
- ``seed``: an integer >= 0, or None to draw one from torch's global generator (so
  ``pyro.set_rng_seed`` fixes it); booleans are refused. Rank 0's seed is used everywhere;
- the state the estimator runs in (:func:`pvae.infer.evaluation_mode.evaluation_mode`): the
  global generator forked (a given seed leaves it untouched), no autograd graph, Pyro's
  validation off, :func:`pvae.infer.evaluation_mode.in_evaluation` true;
- ``progress``: a bar on the main process (None: at a terminal or in a notebook).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pvae.infer.checks import check_model_data
from pvae.infer.device import resolve_device
from pvae.infer.distributed import Cluster, connect
from pvae.infer.evaluation_mode import evaluation_mode
from pvae.infer.progress import progress_enabled
from pvae.infer.sources import as_tensors, rows_on

__all__ = ["Evaluation", "check_count", "evaluating", "seed_torch"]


def check_count(name: str, value, *, optional: bool = False, minimum: int = 1) -> None:
    """Raise the one ``ValueError`` every estimator gives for a count that is not an integer
    of at least ``minimum`` (1, or 0 for a non-negative one; None allowed when ``optional``);
    booleans are refused.

    Example::

        >>> check_count("num_chains", 0)
        Traceback (most recent call last):
        ...
        ValueError: num_chains must be a positive integer, got 0
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}")


def seed_torch(*key: int) -> None:
    """Seed torch's generator from a key, e.g. (seed, data block, particle block).

    Example::

        >>> seed_torch(0, 1); first = torch.rand(1)
        >>> seed_torch(0, 1); torch.equal(first, torch.rand(1))
        True
    """
    entropy = [int(k) % 2**63 for k in key]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    torch.manual_seed(int(state) >> 1)  # 63 bits: a seed every device accepts


@dataclass(frozen=True)
class Evaluation:
    """An evaluation problem as :func:`evaluating` prepared it: checked ``tensors`` (in the
    model's dtype, wherever the data were), the ``device`` model and guide run on, this
    process's ``cluster``, the ``seed`` (the same on every process) and whether to show
    ``progress``."""

    model: object
    guide: object
    tensors: tuple[torch.Tensor, ...]
    device: torch.device
    cluster: Cluster
    seed: int
    progress: bool

    @property
    def num_data(self) -> int:
        return self.tensors[0].shape[0]

    @property
    def data_dim(self) -> int:
        """Values per datapoint of the observed data (for bits/dim)."""
        return self.tensors[0][0].numel()

    def rows(self, start: int, end: int) -> tuple[torch.Tensor, ...]:
        """Rows start:end of every tensor, on the device."""
        return rows_on(self.tensors, start, end, self.device)

    def share(self, multiple: int = 1) -> tuple[int, int]:
        """Start and end of this process's contiguous share of the rows, cut at multiples of
        ``multiple`` (a chunk or block of draws keeps the draws of a single process)."""
        return self.cluster.rows(self.num_data, multiple=multiple)

    def bar(self, total: int, **options) -> tqdm:
        """A progress bar of ``total`` units, shown on the main process only."""
        return tqdm(total=total, disable=not (self.progress and self.cluster.is_main), **options)

    def gather(self, shard: tuple) -> tuple:
        """Every process's ``shard`` (a tuple of tensors [rows, ...] and other values) joined
        in rank order: tensors concatenated, other values listed by rank."""
        shards = self.cluster.gather_objects(shard)
        return tuple(
            torch.cat(parts) if isinstance(parts[0], torch.Tensor) else list(parts)
            for parts in zip(*shards, strict=True)
        )


@contextlib.contextmanager
def evaluating(
    model,
    guide,
    data,
    *,
    seed: int | None = None,
    distributed: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Iterator[Evaluation]:
    """Prepare an estimator's problem (module docstring) and run the body in evaluation mode.

    The estimator checks its own arguments first; then the seed is checked, the data read and
    their shape checked, the device resolved, the process group joined, every row checked for
    the model (in evaluation mode: a refused call leaves the global generator as it was), and
    the seed drawn and broadcast.

    Example::

        >>> with evaluating(model, guide, np.zeros((4, 2)), seed=0) as problem:  # doctest: +SKIP
        ...     problem.tensors[0].dtype, problem.seed, in_evaluation()
        (torch.float32, 0, True)
    """
    check_count("seed", seed, optional=True, minimum=0)
    tensors = data_tensors(data)
    device = tensors[0].device if device is None else resolve_device(device)
    cluster = connect(device, distributed)
    with evaluation_mode(device):  # data refused leave the global generator as it was
        tensors = check_model_data(model, guide, tensors, device)
    if seed is None:
        seed = int(torch.randint(2**62, (), device="cpu"))
    seed = cluster.broadcast_int(seed, device)
    show = progress_enabled() if progress is None else bool(progress)
    with evaluation_mode(device):
        yield Evaluation(model, guide, tensors, device, cluster, seed, show)


def data_tensors(data) -> tuple[torch.Tensor, ...]:
    """``data`` as the tuple of tensors of ``model(*batch)``, with one clear error where they
    hold no datapoints or disagree on how many."""
    tensors = as_tensors(data)
    if not tensors or tensors[0].dim() == 0 or tensors[0].shape[0] == 0:
        raise ValueError("data is empty: pass a tensor (or tuple of tensors) of datapoints")
    if any(t.dim() == 0 or t.shape[0] != tensors[0].shape[0] for t in tensors):
        raise ValueError("all tensors in data must have the same first (datapoint) dimension")
    return tensors
