"""What every likelihood shares: the data-preparation defaults and the split of decoder outputs.

A module of its own so that :mod:`pvae.models.likelihoods` (8-bit and binary data) and
:mod:`pvae.models.real_likelihoods` (real-valued data) build on it without importing each
other.
"""

from __future__ import annotations

import math

import torch

from pvae.data import held_out_data, train_transform


def inverse_softplus(y: float) -> float:
    """The x with softplus(x) = y > 0: a raw parameter that starts a positive one at y.

    Example::

        >>> round(inverse_softplus(math.log(2.0)), 12)
        0.0
    """
    return y + math.log(-math.expm1(-y))


def value_range(x: torch.Tensor) -> str:
    """``[min, max]`` of ``x``, for messages about data."""
    return f"[{x.min().item():g}, {x.max().item():g}]"


def split_params(params: torch.Tensor, event_dim: int, parts: int) -> tuple[torch.Tensor, ...]:
    """A decoder's output cut into a likelihood's ``parts`` parameters along the event's
    first dimension (e.g. a Normal's loc and raw scale)."""
    return params.chunk(parts, dim=params.dim() - event_dim)


class DataPreparation:
    """How a likelihood wants its data (``data_form``, one of :data:`pvae.data.DATA_FORMS`:
    as given, unless it says otherwise); :mod:`pvae.data` prepares them."""

    data_form = "as_given"

    def train_transform(self):
        """The ``transform`` to give :func:`pvae.fit` for training data (or ``None``)."""
        return train_transform(self.data_form)

    def held_out_data(self, x: torch.Tensor) -> torch.Tensor:
        """Held-out data as this likelihood scores them (fixed, so bounds are comparable)."""
        return held_out_data(x, self.data_form)
