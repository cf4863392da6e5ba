"""The Monte Carlo pass of :func:`pvae.analysis.diagnostics.diagnose` over a chunk of rows.

``num_samples`` draws per datapoint from q_φ, and the same standard-normal draws through
q* (common random numbers, :func:`pvae.analysis.gaps.weight_chunks`), give both ELBOs, their
difference (the amortization gap) and the KL terms, each with its Monte Carlo error.
"""

from __future__ import annotations

import math

import torch

from pvae.analysis.gaps import weight_chunks
from pvae.analysis.information import kl_draws

__all__ = ["Moments", "score_chunk"]

# Latent draws per model call (datapoints x particles).
_DRAWS_PER_CALL = 100_000


class Moments:
    """Per-datapoint mean of draws fed in particle chunks [P, N, ...] and its MC error."""

    def __init__(self):
        self.sum = self.sum_sq = self.shift = 0.0
        self.count = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        if self.count == 0:  # sums of draws minus the first: a constant has variance 0 exactly
            self.shift = values[0]
        values = values - self.shift
        self.sum, self.sum_sq = self.sum + values.sum(0), self.sum_sq + (values**2).sum(0)
        self.count += values.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.shift + self.sum / self.count).cpu()

    def variance_of_mean(self) -> torch.Tensor:
        """Var(draw) / P per datapoint: the squared MC error of ``mean``."""
        if self.count < 2:
            return torch.full_like(self.mean(), math.nan)
        variance = (self.sum_sq - self.sum**2 / self.count) / (self.count - 1)
        return (variance.clamp(min=0) / self.count).cpu()

    def se(self) -> torch.Tensor:
        return self.variance_of_mean().sqrt()


def score_chunk(model, guide, local, batch, nesting, num_samples, seed) -> dict:
    """KLs (per unit and in all) and, with a local guide, both ELBOs of these rows."""
    num_data = batch[0].shape[0]
    chunk = max(1, min(num_samples, _DRAWS_PER_CALL // num_data))
    stats = {key: Moments() for key in ("elbo", "optimal", "difference", "kl", "unit")}
    closed = True
    draws = weight_chunks(model, guide, batch, nesting, num_samples, chunk, seed)
    star = None
    if local is not None:  # the same draws through q*: common random numbers
        star = weight_chunks(model, local.guide, batch, nesting, num_samples, chunk, seed)
    for log_w, guide_run, model_run in draws:
        count = log_w.shape[0]
        stats["elbo"].update(log_w)
        kl, unit, exact = kl_draws(guide_run, model_run, nesting, count, num_data)
        stats["kl"].update(kl)
        stats["unit"].update(unit)
        closed = closed and exact
        if star is not None:
            log_w_star = next(star)[0]
            stats["optimal"].update(log_w_star)
            stats["difference"].update(log_w_star - log_w)
    unit = stats["unit"]
    found = {
        "kl_per_datapoint": stats["kl"].mean(),
        "kl_se": stats["kl"].se(),
        # Sums over datapoints, combined over chunks by the caller.
        "unit": (unit.mean().sum(0), unit.variance_of_mean().nan_to_num(0).sum(0), int(closed)),
    }
    if star is not None:
        found.update(
            elbo_per_datapoint=stats["elbo"].mean(), elbo_se=stats["elbo"].se(),
            optimal_elbo_per_datapoint=stats["optimal"].mean(),
            optimal_elbo_se=stats["optimal"].se(), amortization_gap_se=stats["difference"].se(),
        )  # fmt: skip
    return found
