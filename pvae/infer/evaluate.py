"""Held-out bounds on log p(x) for any model/guide pair with a ``"data"`` plate."""

from __future__ import annotations

import pyro
import torch

from pvae.infer.evaluation import check_count, evaluating, seed_torch
from pvae.infer.objectives import ScaleDataPlate, choose_objective, inspect_model
from pvae.infer.plates import trace_pair


def estimate_elbo(
    model,
    guide,
    data,
    batch_size: int = 1000,
    num_particles: int = 1,
    device=None,
    *,
    seed: int | None = None,
    distributed: bool | None = None,
    progress: bool | None = False,
) -> float:
    """Mean per-datapoint ELBO (nats) of ``data``, one Monte Carlo estimate per datapoint.

    ``data`` is a tensor, a numpy array, a tuple of those passed to ``model(*batch)``, or a
    torch ``Dataset``/``DataLoader`` (read into memory); it is evaluated in
    chunks of ``batch_size`` and nothing is dropped. Sites outside the ``"data"`` plate (global
    latents) would be counted once per chunk: this is a per-datapoint figure for models whose
    latents are all local, as a VAE's are. The data are checked, every row, and converted
    to the model's dtype first, as training data are
    (:func:`pvae.infer.checks.check_model_data`); enumerated discrete latents are summed out
    (TraceEnum_ELBO).

    Data, ``device``, processes, ``seed`` and ``progress`` as every estimator of
    :mod:`pvae.infer.evaluation` takes them: ``device`` is where model and guide run
    (``"auto"``, ``"cuda"``, ...; default: the data's), data in host memory copied there a
    chunk at a time; each chunk draws under a seed derived from ``seed`` and the chunk, so a
    given ``seed`` gives the same number again and leaves the global generator untouched,
    and ``seed=None`` draws the seed from the global generator (``pyro.set_rng_seed`` fixes
    it; a bool is refused); under torchrun (or ``distributed=True``) each process takes its
    share of the chunks and all get the whole mean, the single process's. ``batch_size`` and
    ``num_particles`` must be positive integers. The model runs in evaluation mode
    (:func:`pvae.infer.evaluation_mode.in_evaluation`: a β-VAE is scored at β = 1).

    Example::

        >>> estimate_elbo(vae.model, vae.guide, test_x, seed=0)  # doctest: +SKIP
        -98.7
    """
    check_count("batch_size", batch_size)
    check_count("num_particles", num_particles)
    frontend = {"seed": seed, "distributed": distributed, "device": device, "progress": progress}
    with evaluating(model, guide, data, **frontend) as evaluation:
        start, end = evaluation.share(multiple=batch_size)
        shard = (torch.zeros(0, dtype=torch.float64, device="cpu"),)
        with evaluation.bar(end - start, unit="datapoint") as bar:
            if end > start:
                rows = tuple(t[start:end] for t in evaluation.tensors)
                shard = (_chunk_losses(model, guide, rows, batch_size, num_particles,
                                       evaluation.device, (evaluation.seed, start // batch_size),
                                       bar.update),)  # fmt: skip
    (losses,) = evaluation.gather(shard)
    return -sum(losses.tolist(), 0.0) / evaluation.num_data


@torch.no_grad()
def elbo_of_checked_data(model, guide, tensors, batch_size, num_particles, device) -> float:
    """:func:`estimate_elbo` without its checks, for data checked once already: one process,
    draws from the global generator as they come."""
    losses = _chunk_losses(model, guide, tensors, batch_size, num_particles, device)
    return -sum(losses.tolist(), 0.0) / tensors[0].shape[0]


def _chunk_losses(
    model, guide, tensors, batch_size, num_particles, device, seed=None, tick=None
) -> torch.Tensor:
    """The negative ELBO summed over each chunk of ``batch_size`` rows [chunks] (CPU float64).

    With ``seed`` = (seed, index of the first chunk), chunk i draws under seed_torch(seed,
    first + i); without, from the generator as it stands.
    """
    num_data = tensors[0].shape[0]
    first = tuple(t[:2].to(device) for t in tensors)
    with pyro.validation_enabled(False):
        traces = trace_pair(model, guide, *first)
    nesting = inspect_model(model, guide, traces=traces)
    elbo = choose_objective("elbo", num_particles, nesting, traces)
    losses = []
    with pyro.validation_enabled(False):
        for index, start in enumerate(range(0, num_data, batch_size)):
            chunk = tuple(t[start : start + batch_size].to(device) for t in tensors)
            if seed is not None:
                seed_torch(seed[0], seed[1] + index)
            # Scale 1 per datapoint, whatever size the model declares for its data plate.
            per_point = ScaleDataPlate(chunk[0].shape[0], rows=chunk[0].shape[0])
            if isinstance(elbo, pyro.infer.ELBO):  # e.g. TraceEnum_ELBO: no differentiable
                loss = elbo.loss(per_point(model), per_point(guide), *chunk)  # loss under no_grad
            else:
                loss = elbo.differentiable_loss(per_point(model), per_point(guide), *chunk)
            losses.append(torch.as_tensor(loss, dtype=torch.float64, device=device))
            if tick is not None:
                tick(chunk[0].shape[0])
    return torch.stack(losses).cpu()
