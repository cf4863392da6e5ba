"""Anomaly scores of a trained VAE: −IWAE_K log-likelihood, −ELBO, reconstruction error.

An image unlike the training data should get a low likelihood under the model; the IWAE_K
bound of :func:`pvae.log_likelihood` estimates log p(x) per image, the ELBO is the same
with K = 1 (a looser bound, biased by how well the guide fits that image), and the
reconstruction error ignores the prior altogether. :func:`auroc` measures how well a score
tells anomalies from normal images: the probability that a random anomaly scores above a
random normal image (1: perfect, 0.5: chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pvae.infer.iwae import LogLikelihood, log_likelihood


@dataclass(frozen=True, eq=False)
class AnomalyScores:
    """Per-image anomaly scores (higher: more anomalous), float64 CPU tensors of shape [N].

    ``log_likelihood`` is the underlying :class:`pvae.LogLikelihood`, with its k-hat
    diagnostics of the IWAE estimate.
    """

    log_likelihood: LogLikelihood
    reconstruction_error: torch.Tensor

    @property
    def negative_iwae(self) -> torch.Tensor:
        return -self.log_likelihood.per_datapoint

    @property
    def negative_elbo(self) -> torch.Tensor:
        return -self.log_likelihood.elbo_per_datapoint

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The three scores by name, in the order −IWAE_K, −ELBO, reconstruction error."""
        return {
            f"-IWAE_{self.log_likelihood.num_samples}": self.negative_iwae,
            "-ELBO": self.negative_elbo,
            "reconstruction error": self.reconstruction_error,
        }


@torch.no_grad()
def anomaly_scores(
    vae, x: torch.Tensor, num_samples: int = 1000, seed: int | None = 0, batch_size: int = 1000
) -> AnomalyScores:
    """Score every image of ``x`` by −IWAE_K, −ELBO and reconstruction error.

    −IWAE_K and −ELBO (nats) come from one call of :func:`pvae.log_likelihood` with K =
    ``num_samples``: the ELBO is the mean of the same K log-weights. The reconstruction
    error is the squared distance between x and the decoder's mean at the posterior mean,
    ``||x - vae.reconstruct(x)||²``, summed over pixels.

    Example::

        >>> scores = anomaly_scores(vae, test_x, num_samples=1000)  # doctest: +SKIP
        >>> auroc(scores.negative_iwae, is_anomaly)  # doctest: +SKIP
        0.93
    """
    bound = log_likelihood(vae.model, vae.guide, x, num_samples, seed=seed)
    errors = [
        ((batch - vae.reconstruct(batch)) ** 2).flatten(1).sum(1) for batch in x.split(batch_size)
    ]
    return AnomalyScores(
        log_likelihood=bound, reconstruction_error=torch.cat(errors).double().cpu()
    )


def auroc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher: more anomalous) for ``is_anomaly``.

    Uses ``sklearn.metrics.roc_auc_score``.

    Example::

        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(_numpy(is_anomaly).astype(bool), _numpy(scores)))


def auroc_interval(
    scores: torch.Tensor,
    is_anomaly: torch.Tensor,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auroc`, resampling anomalies and normals apart.

    ``scipy.stats.bootstrap`` with the two groups as independent samples (``paired=False``)
    and the percentile method; the resampled AUROCs come from ranks (the Mann-Whitney U
    statistic, ties counted half, which is what ``roc_auc_score`` computes), all resamples
    at once.

    Example::

        >>> low, high = auroc_interval(scores.negative_iwae, is_anomaly)  # doctest: +SKIP
    """
    from scipy.stats import bootstrap

    scores, labels = _numpy(scores), _numpy(is_anomaly).astype(bool)
    anomalies, normals = scores[labels], scores[~labels]

    def statistic(anomalous: np.ndarray, normal: np.ndarray, axis: int = -1) -> np.ndarray:
        both = np.concatenate([anomalous, normal], axis=axis)
        return _auroc_by_ranks(np.moveaxis(both, axis, -1), anomalous.shape[axis])

    result = bootstrap(
        (anomalies, normals),
        statistic,
        n_resamples=num_resamples,
        vectorized=True,
        paired=False,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def _auroc_by_ranks(scores: np.ndarray, num_anomalies: int) -> np.ndarray:
    """AUROC of each row of ``scores`` [..., n] whose first ``num_anomalies`` are anomalies."""
    from scipy.stats import rankdata

    num_normal = scores.shape[-1] - num_anomalies
    ranks = rankdata(scores, axis=-1)  # average ranks: a tie counts one half
    rank_sum = ranks[..., :num_anomalies].sum(-1)
    return (rank_sum - num_anomalies * (num_anomalies + 1) / 2) / (num_anomalies * num_normal)


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
