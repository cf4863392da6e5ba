"""What every per-datapoint estimate of log p(x) reports: its mean, standard error and bits."""

from __future__ import annotations

import math


class PerDatapointEstimate:
    """For results with ``per_datapoint`` (nats, [N]) and ``data_dim`` (values per datapoint).

    Example::

        >>> import torch
        >>> class Result(PerDatapointEstimate):
        ...     per_datapoint, data_dim = torch.tensor([-1.0, -3.0]), 2
        >>> Result().mean, round(Result().standard_error, 3)
        (-2.0, 1.0)
    """

    @property
    def mean(self) -> float:
        return self.per_datapoint.mean().item()

    @property
    def standard_error(self) -> float:
        """Standard deviation over datapoints / sqrt(N): the error of ``mean`` as an average."""
        n = self.per_datapoint.numel()
        return self.per_datapoint.std().item() / math.sqrt(n) if n > 1 else math.nan

    @property
    def bits_per_dim(self) -> float:
        return -self.mean / (self.data_dim * math.log(2))
