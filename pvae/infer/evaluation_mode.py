"""Evaluation mode: the state every estimator of a trained model runs in.

A β-VAE scales its KL term (``poutine.scale``) while it trains, but a bound on log p(x) is a
bound on the model itself, β = 1. Gradient-free evaluation (``log_likelihood``,
``estimate_elbo``) was told apart by ``torch.is_grad_enabled()``; AIS and BDMC need gradients
of the latents for HMC, so they say so explicitly: a model asks :func:`in_evaluation` rather
than guess from the autograd state.
"""

from __future__ import annotations

import contextlib
import threading

import pyro
import torch

__all__ = ["evaluation_mode", "forked_rng", "in_evaluation"]

_state = threading.local()


def in_evaluation() -> bool:
    """Whether an estimator of the trained model (not a training step) is running.

    Example::

        >>> in_evaluation()
        False
    """
    return getattr(_state, "depth", 0) > 0


def forked_rng(device: torch.device):
    """Random draws made inside leave torch's generators (CPU, and ``device``'s) as they were.

    Example::

        >>> state = torch.get_rng_state()
        >>> with forked_rng(torch.device("cpu")):
        ...     _ = torch.rand(2)
        >>> torch.equal(state, torch.get_rng_state())
        True
    """
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


@contextlib.contextmanager
def evaluation_mode(device: torch.device):
    """Run an estimator: the global random state restored afterwards (a given seed leaves it
    alone), no autograd graph unless the estimator enables it, Pyro's validation off (the data
    were checked once), and :func:`in_evaluation` true.

    Example::

        >>> with evaluation_mode(torch.device("cpu")):
        ...     in_evaluation(), torch.is_grad_enabled()
        (True, False)
    """
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        with (
            forked_rng(device),
            torch.no_grad(),
            pyro.validation_enabled(False),
        ):
            yield
    finally:
        _state.depth -= 1
