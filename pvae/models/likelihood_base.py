"""What every likelihood shares: the data-preparation defaults and the split of decoder outputs.

A module of its own so that :mod:`pvae.models.likelihoods` (8-bit and binary data) and
:mod:`pvae.models.real_likelihoods` (real-valued data) build on it without importing each
other.
"""

from __future__ import annotations

import math

import torch

from pvae.data import held_out_data, train_transform


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _range(x: torch.Tensor) -> str:
    return f"[{x.min().item():g}, {x.max().item():g}]"


def _split(params: torch.Tensor, event_dim: int, parts: int) -> tuple[torch.Tensor, ...]:
    return params.chunk(parts, dim=params.dim() - event_dim)


class _DataPreparation:
    """How a likelihood wants its data (``data_form``, one of :data:`pvae.data.DATA_FORMS`:
    as given, unless it says otherwise); :mod:`pvae.data` prepares them."""

    data_form = "as_given"

    def train_transform(self):
        """The ``transform`` to give :func:`pvae.fit` for training data (or ``None``)."""
        return train_transform(self.data_form)

    def held_out_data(self, x: torch.Tensor) -> torch.Tensor:
        """Held-out data as this likelihood scores them (fixed, so bounds are comparable)."""
        return held_out_data(x, self.data_form)
