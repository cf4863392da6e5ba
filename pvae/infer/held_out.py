"""The held-out bound :func:`pvae.fit` reports after each epoch: the ELBO, or IWAE_K with
``held_out_num_samples=K`` (the bound that patience, ``best.pt`` and the plateau schedule watch).
"""

from __future__ import annotations

import torch

from pvae.infer.checks import check_model_data
from pvae.infer.distributed import Cluster
from pvae.infer.evaluate import elbo_of_checked_data
from pvae.infer.iwae import log_likelihood
from pvae.infer.training_streams import named_errors

# The held-out IWAE's draws: the same every epoch, and apart from the training's generators.
HELD_OUT_SEED = 20_160_000


class HeldOutBound:
    """Held-out data checked for the model, scored after each epoch.

    ``samples`` is K: 1 gives the ELBO (each rank a contiguous shard), K > 1 IWAE_K and the
    ELBO of the same draws (common random numbers: epochs differ by their weights, not by
    their noise). Data the model cannot score by IWAE_K (a global latent, say) are refused
    here, before any step.
    """

    def __init__(self, model, guide, held_out, samples: int, cluster: Cluster, device):
        self.model, self.guide, self.samples = model, guide, samples
        self.cluster, self.device = cluster, device
        self.tensors = check_model_data(model, guide, held_out, device, "held-out data", 2)
        self._check_iwae()

    def _check_iwae(self) -> None:
        """Refuse before any step what IWAE_K cannot score (e.g. a global latent)."""
        if self.samples == 1:
            return
        two_rows = tuple(t[:2] for t in self.tensors)
        try:
            _iwae(self.model, self.guide, two_rows, 2, False, self.device)
        except ValueError as error:
            raise ValueError(
                f"held_out_num_samples={self.samples} scores the held-out data "
                f"by IWAE_K, which this model has none of: {error}; or keep "
                "held_out_num_samples=1 (the held-out ELBO)"
            ) from None

    def evaluate(self) -> tuple[float, float | None]:
        """The held-out ELBO and IWAE_K (None with K = 1), nats per datapoint."""
        if self.samples > 1:
            iwae, elbo = _iwae(
                self.model,
                self.guide,
                self.tensors,
                self.samples,
                self.cluster.active,
                self.device,
            )
            return elbo, iwae
        return _elbo(self.model, self.guide, self.tensors, self.cluster, self.device), None


class HeldOutStreams:
    """Held-out data of several named streams (``{"labelled": (x, y), "unlabelled": x}``),
    each scored as :class:`HeldOutBound` scores plain data; the figures are the means over
    all their datapoints (each stream weighs by its size, as in the training objective)."""

    def __init__(self, model, guide, held_out: dict, samples: int, cluster: Cluster, device):
        self.parts = {}
        for name, tensors in held_out.items():
            with named_errors(f"held_out[{name!r}]"):
                self.parts[name] = HeldOutBound(model, guide, tensors, samples, cluster, device)

    def evaluate(self) -> tuple[float, float | None]:
        """The held-out ELBO and IWAE_K (None with K = 1), nats per datapoint of all streams."""
        sizes = {name: part.tensors[0].shape[0] for name, part in self.parts.items()}
        figures = {name: part.evaluate() for name, part in self.parts.items()}
        total = sum(sizes.values())
        elbo = sum(figures[name][0] * sizes[name] for name in sizes) / total
        if any(iwae is None for _, iwae in figures.values()):
            return elbo, None
        return elbo, sum(figures[name][1] * sizes[name] for name in sizes) / total


def _elbo(model, guide, tensors, cluster: Cluster, device: torch.device) -> float:
    """Mean per-datapoint held-out ELBO, each rank evaluating a contiguous shard."""
    num_data = tensors[0].shape[0]
    start, end = cluster.rows(num_data)
    total = torch.zeros((), dtype=torch.float64, device=device)
    if end > start:
        shard = tuple(t[start:end] for t in tensors)
        total += elbo_of_checked_data(model, guide, shard, 1000, 1, device) * (end - start)
    return cluster.sum_(total).item() / num_data


def _iwae(model, guide, tensors, k, distributed, device) -> tuple[float, float]:
    """Mean per-datapoint held-out IWAE_K and the ELBO of the same draws."""
    bound = log_likelihood(
        model,
        guide,
        tensors,
        k,
        seed=HELD_OUT_SEED,
        max_log_weights=0,  # no k-hat each epoch: pvae.log_likelihood gives it at the end
        distributed=distributed,
        device=device,
        progress=False,
    )
    return bound.mean, bound.elbo
