"""Held-out bounds on log p(x) for any model/guide pair with a ``"data"`` plate."""

from __future__ import annotations

import pyro
import torch

from pvae.infer.checks import check_model_data
from pvae.infer.objectives import ScaleDataPlate, choose_objective, inspect_model
from pvae.infer.plates import trace_pair
from pvae.infer.sources import as_tensors


@torch.no_grad()
def estimate_elbo(
    model, guide, data, batch_size: int = 1000, num_particles: int = 1, device=None
) -> float:
    """Mean per-datapoint ELBO (nats) of ``data``, one Monte Carlo estimate per datapoint.

    ``data`` is a tensor, a numpy array, a tuple of those passed to ``model(*batch)``, or a
    torch ``Dataset``/``DataLoader`` (read into memory); it is evaluated in
    chunks of ``batch_size`` and nothing is dropped. Sites outside the ``"data"`` plate (global
    latents) would be counted once per chunk: this is a per-datapoint figure for models whose
    latents are all local, as a VAE's are. With ``device``, chunks are copied there first
    (data in host memory, networks on the GPU). The data are checked, every row, and converted
    to the model's dtype first, as training data are
    (:func:`pvae.infer.checks.check_model_data`); enumerated discrete latents are summed out
    (TraceEnum_ELBO).

    Example::

        >>> estimate_elbo(vae.model, vae.guide, test_x)  # doctest: +SKIP
        -98.7
    """
    tensors = as_tensors(data)
    device = tensors[0].device if device is None else torch.device(device)
    tensors = check_model_data(model, guide, tensors, device)
    return elbo_of_checked_data(model, guide, tensors, batch_size, num_particles, device)


@torch.no_grad()
def elbo_of_checked_data(model, guide, tensors, batch_size, num_particles, device) -> float:
    """:func:`estimate_elbo` without its checks, for data checked once already."""
    num_data = tensors[0].shape[0]
    first = tuple(t[:2].to(device) for t in tensors)
    with pyro.validation_enabled(False):
        traces = trace_pair(model, guide, *first)
    nesting = inspect_model(model, guide, traces=traces)
    elbo = choose_objective("elbo", num_particles, nesting, traces)
    total = torch.zeros((), dtype=torch.float64, device=device)
    with pyro.validation_enabled(False):
        for start in range(0, num_data, batch_size):
            chunk = tuple(t[start : start + batch_size].to(device) for t in tensors)
            # Scale 1 per datapoint, whatever size the model declares for its data plate.
            per_point = ScaleDataPlate(chunk[0].shape[0])
            if isinstance(elbo, pyro.infer.ELBO):  # e.g. TraceEnum_ELBO: no differentiable
                loss = elbo.loss(per_point(model), per_point(guide), *chunk)  # loss under no_grad
            else:
                loss = elbo.differentiable_loss(per_point(model), per_point(guide), *chunk)
            total += loss
    return -total.item() / num_data
