"""What every likelihood shares: the data-preparation defaults and the split of decoder outputs.

A module of its own so that :mod:`pvae.models.likelihoods` (8-bit and binary data) and
:mod:`pvae.models.real_likelihoods` (real-valued data) build on it without importing each
other.
"""

from __future__ import annotations

import math

import torch


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _range(x: torch.Tensor) -> str:
    return f"[{x.min().item():g}, {x.max().item():g}]"


def _split(params: torch.Tensor, event_dim: int, parts: int) -> tuple[torch.Tensor, ...]:
    return params.chunk(parts, dim=params.dim() - event_dim)


class _DataPreparation:
    """How a likelihood wants its data prepared: nothing to do, unless it says otherwise."""

    def train_transform(self):
        """The ``transform`` to give :func:`pvae.fit` for training data (or ``None``)."""
        return None

    def held_out_data(self, x: torch.Tensor) -> torch.Tensor:
        """Held-out data as this likelihood scores them (fixed, so bounds are comparable)."""
        return x
