"""Checks on the data a model is trained or evaluated on: one clear error, never a number.

Training data, held-out data and evaluation data all pass the same checks: finite floating
values, the model owner's own check (a :class:`pvae.VAE` knows its likelihood's support),
and the support of every observed site of the model on the first rows, so that a
hand-written model's distributions check the data themselves (0-255 bytes or grey levels
given to a Bernoulli, negative counts given to a Poisson, ...).
"""

from __future__ import annotations

import pyro
import torch

from pvae.infer.log_weights import sample_sites
from pvae.infer.plates import trace_pair

_ROWS_TRACED = 16


def check_data(x: torch.Tensor, name: str = "data", min_dim: int = 2, floating=True) -> None:
    """Raise one clear ``ValueError`` if ``x`` is not a non-empty, finite, floating tensor
    (of any dtype when not ``floating``: 8-bit images that a transform converts).

    Example::

        >>> check_data(torch.tensor([[0.0, float("nan")]]))
        Traceback (most recent call last):
        ...
        ValueError: data has 1 NaN/Inf values (first at index (0, 1)): drop or impute them first
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: expected [num_datapoints, ...features]; "
            "for a single datapoint use x.unsqueeze(0)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): nothing to train on")
    if floating and not x.is_floating_point():
        raise ValueError(
            f"{name} has dtype {x.dtype}: convert to floating point, e.g. x.float() / 255 "
            "for 8-bit images, or pass transform=lambda batch: batch.float() / 255 to fit "
            "(the data then stay 8-bit in memory)"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        first = tuple(int(i) for i in (~finite).nonzero()[0])
        raise ValueError(
            f"{name} has {int((~finite).sum())} NaN/Inf values (first at index {first}): "
            "drop or impute them first"
        )


def check_model_data(
    model, guide, data: tuple[torch.Tensor, ...], device, name: str = "data", min_dim: int = 1
) -> None:
    """Raise a ``ValueError`` that says what is wrong if ``model`` cannot score ``data``.

    ``data`` are the whole tensors of ``model(*batch)``, one row per datapoint, on any device:
    all of the first is checked for NaN/Inf and by the model's owner (:func:`check_owner`),
    and its first rows, on ``device``, against the support of the model's observed sites
    (:func:`check_support`).

    Example::

        >>> check_model_data(model, guide, (torch.full((3, 2), 0.5),), "cpu")  # doctest: +SKIP
        ValueError: data do not fit site 'obs' of the model: Bernoulli needs values in
        Boolean(), got 3 of the first 3 datapoints with values outside it (range [0.5, 0.5])
    """
    check_data(data[0], name=name, min_dim=min_dim)
    check_owner(model, data[0], name)
    check_support(model, guide, tuple(t[:_ROWS_TRACED].to(device) for t in data), name)


def check_owner(model, x: torch.Tensor, name: str = "data") -> None:
    """The check of the object ``model`` is a method of, if it has one (a :class:`pvae.VAE`
    knows its likelihood's support), with the data's name in front of its message."""
    owner_check = getattr(getattr(model, "__self__", None), "check_data", None)
    if owner_check is None:
        return
    try:
        owner_check(x)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def check_support(model, guide, first: tuple[torch.Tensor, ...], name: str = "data") -> None:
    """Run the model on these rows (as it sees them: on its device, transformed) and check
    every observed value against its site's support, so that a hand-written model's
    distributions check the data themselves."""
    first = tuple(t[:_ROWS_TRACED] for t in first)
    with torch.no_grad(), pyro.validation_enabled(False):
        _, model_trace = trace_pair(model, guide, *first)
    for site_name, site in sample_sites(model_trace):
        if site["is_observed"]:
            _check_site_support(site_name, site, name)


def _check_site_support(site_name: str, site, name: str) -> None:
    fn, value = site["fn"], site["value"]
    try:
        inside = fn.support.check(value)
    except NotImplementedError:  # a support without a membership test (e.g. Unit's)
        return
    if isinstance(inside, bool) or bool(inside.all()):
        return
    outside = ~inside
    while outside.dim() > 1:
        outside = outside.any(-1)
    shown = value[~inside] if value.shape == inside.shape else value
    low, high = float(shown.min()), float(shown.max())
    raise ValueError(
        f"{name} do not fit site {site_name!r} of the model: {_distribution_name(fn)} needs "
        f"values in {fn.support}, got {int(outside.sum())} of the first {outside.numel()} "
        f"datapoints with values outside it (range [{low:g}, {high:g}]); prepare the data "
        "for this likelihood (e.g. binarize for a Bernoulli) or choose a likelihood whose "
        "support holds them"
    )


def _distribution_name(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__
