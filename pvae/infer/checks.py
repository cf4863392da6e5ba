"""Checks on the data a model is trained or evaluated on: one clear error, never a number.

Training data, held-out data and evaluation data all pass the same checks: finite values, in
the model's floating dtype where that keeps their meaning (:func:`model_dtype`,
:func:`pvae.infer.sources.as_model_dtype`), the model owner's own check (a :class:`pvae.VAE`
knows its likelihood's support), and the support of every observed site of the model on
every row, so that a hand-written model's distributions check the data themselves (0-255
bytes or grey levels given to a Bernoulli, negative counts given to a Poisson, ...).

The support check traces the first rows to learn the observed sites, with the caller's
random draws as before; then every row is checked under a forked generator, so that the
numbers drawn after it are those of an unchecked run. A site that observes a data tensor as
given (``obs=x``, reshaped at most) with a support free of parameters is checked on the
tensor itself, at the cost of one comparison per value; otherwise the model is run on
chunks of rows with the guide's draws and its observed values are checked.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from pvae.infer.evaluation_mode import forked_rng
from pvae.infer.log_weights import sample_sites
from pvae.infer.plates import trace_pair
from pvae.infer.sources import as_model_dtype, describe_index, first_true, rows_on

# Rows traced to learn the observed sites (their draws are the caller's, as they always were).
_ROWS_TRACED = 16
# Rows per model run where the model must be run to see its observed values.
_ROWS_PER_RUN = 4096
# Rows per support check where a site observes the data as given: no model run, little memory.
_ROWS_PER_CHECK = 65536


def check_data(x: torch.Tensor, name: str = "data", min_dim: int = 2, floating=True) -> None:
    """Raise one clear ``ValueError`` if ``x`` is not a non-empty, finite, floating tensor
    (of any dtype when not ``floating``: data that :func:`pvae.infer.sources.as_model_dtype`
    or a transform converts).

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
            f"{name} has dtype {x.dtype}: a transform must return floating-point data, e.g. "
            "transform=lambda batch: batch.float() / 255 for 8-bit images"
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
) -> tuple[torch.Tensor, ...]:
    """``data`` checked for ``model`` and with its first tensor in the model's dtype; raise
    a ``ValueError`` that says what is wrong if ``model`` cannot score them.

    ``data`` are the whole tensors of ``model(*batch)``, one row per datapoint, on any device:
    the first is checked for NaN/Inf, converted (:func:`pvae.infer.sources.as_model_dtype`),
    checked by the model's owner (:func:`check_owner`), and every row against the support of
    the model's observed sites, run on ``device`` (:func:`check_support`).

    Example::

        >>> check_model_data(model, guide, (torch.full((3, 2), 0.5),), "cpu")  # doctest: +SKIP
        ValueError: data do not fit site 'obs' of the model: Bernoulli needs values in
        Boolean(), got 3 datapoints with values outside it, first at row 0, column 0, value 0.5
        (data range [0.5, 0.5]); prepare the data for this likelihood ...
    """
    check_data(data[0], name=name, min_dim=min_dim, floating=False)
    data = as_model_dtype(data, model_dtype(model, guide, rows_on(data, 0, 2, device)), name)
    check_owner(model, data[0], name)
    check_support(model, guide, data, name, device)
    return data


def model_dtype(model, guide, rows: tuple[torch.Tensor, ...]) -> torch.dtype | None:
    """The floating dtype ``model`` computes in: its parameters' when it is a method of a
    module (a :class:`pvae.VAE`), else those of the parameters model and guide register with
    Pyro when run on ``rows`` (a few); None for a model without parameters (its constants
    may be of any dtype: floating data are then taken as given).

    Example::

        >>> model_dtype(torch.nn.Linear(2, 2).double().forward, None, ())
        torch.float64
    """
    owner = getattr(model, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        found = [p.dtype for p in owner.parameters() if p.is_floating_point()]
        if found:
            return found[0]
    if not rows:
        return None
    default = torch.get_default_dtype()
    x = rows[0].real if rows[0].is_complex() else rows[0]
    rows = (x[:2].to(default),) + tuple(t[:2] for t in rows[1:])
    probe, store = _ParameterDtype(), pyro.get_param_store()
    known = set(store.keys())
    with forked_rng(x.device), torch.no_grad(), pyro.validation_enabled(False), probe:
        for run in (model, guide):
            if probe.dtype is not None:
                break
            # Data in another dtype may fail after the parameters are registered; the checks
            # and the run that follow report the model's own errors.
            with contextlib.suppress(Exception):
                run(*rows)
    for name in set(store.keys()) - known:
        # Registered by the probe from a forked generator: the real run registers them
        # again, with the draws of the caller's seed.
        del store[name]
    return probe.dtype


class _ParameterDtype(Messenger):
    """Records the dtype of the first floating parameter a model or guide registers."""

    def __init__(self):
        super().__init__()
        self.dtype = None

    def _pyro_post_param(self, msg) -> None:
        value = msg["value"]
        if self.dtype is None and torch.is_tensor(value) and value.is_floating_point():
            self.dtype = value.dtype


def check_owner(model, x: torch.Tensor, name: str = "data", first_row: int = 0) -> None:
    """The check of the object ``model`` is a method of, if it has one (a :class:`pvae.VAE`
    knows its likelihood's support), with the data's name in front of its message and the
    first row it refuses after it (rows of ``x`` count from ``first_row``)."""
    owner_check = getattr(getattr(model, "__self__", None), "check_data", None)
    if owner_check is None:
        return
    try:
        owner_check(x)
    except ValueError as error:
        where = _first_failing_row(owner_check, x, first_row)
        raise ValueError(f"{name}: {error}{where}") from None


def _first_failing_row(check, x: torch.Tensor, first_row: int) -> str:
    """`` (first at row r)``: the first row ``check`` refuses, found by bisection on prefixes
    of ``x``; empty when the check refuses any single row alike (its shape, say)."""
    if _refuses(check, x[:1]) and _refuses(check, x[-1:]):
        return ""
    low, high = 1, x.shape[0]  # the prefix of `high` rows is refused, of `low - 1` is not
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if _refuses(check, x[:middle]) else (middle + 1, high)
    return f" (first at {describe_index((first_row + high - 1,))})"


def _refuses(check, rows: torch.Tensor) -> bool:
    try:
        check(rows)
    except ValueError:
        return True
    return False


def check_support(
    model, guide, data: tuple[torch.Tensor, ...], name: str = "data", device=None
) -> None:
    """Check every row of ``data`` against the support of each observed site of ``model``.

    The first rows are traced on ``device`` (default: the data's) to learn the sites
    (:func:`observed_sites`), then all rows are checked (:func:`check_rows`).

    Example::

        >>> check_support(model, guide, (torch.full((30, 2), 0.5),))  # doctest: +SKIP
        ValueError: data do not fit site 'obs' of the model: Bernoulli needs values in ...
    """
    device = data[0].device if device is None else device
    sites = observed_sites(model, guide, rows_on(data, 0, _ROWS_TRACED, device))
    check_rows(model, guide, sites, data, name, device)


@dataclass(frozen=True)
class ObservedSite:
    """An observed site as the first rows show it: its distribution, and the data tensor it
    observes as given (``source``; None when the model computes what it observes)."""

    name: str
    fn: object
    source: int | None
    shape: tuple[int, ...]  # the observed value's shape past the data dimension


def observed_sites(model, guide, first: tuple[torch.Tensor, ...]) -> list[ObservedSite]:
    """The model's observed sites, learned by running model and guide on the first rows of
    ``first`` (as the model sees them: on its device, transformed); :func:`check_rows` checks
    the values. The guide's draws come from torch's global generator, as they always did."""
    first = tuple(t[:_ROWS_TRACED] for t in first)
    with torch.no_grad(), pyro.validation_enabled(False):
        _, model_trace = trace_pair(model, guide, *first)
    sites = []
    for site_name, site in sample_sites(model_trace):
        if site["is_observed"]:
            sites.append(_observed_site(site_name, site, first))
    return sites


def _observed_site(site_name: str, site, first) -> ObservedSite:
    value, fn = site["value"], site["fn"]
    source = None
    if value.dim() > 0 and _parameter_free(fn.support):
        for i, tensor in enumerate(first):
            same_rows = value.shape[0] == tensor.shape[0] and value.numel() == tensor.numel()
            if same_rows and torch.equal(value, tensor.reshape(value.shape).to(value.dtype)):
                source = i
                break
    return ObservedSite(site_name, fn, source, tuple(value.shape[1:]))


def _parameter_free(support) -> bool:
    """Whether ``support`` holds the same values for every datapoint (no tensor bounds, such
    as a Binomial's total count), so that it can check rows the first trace did not see."""
    support = _elementwise(support)
    if isinstance(support, constraints._Dependent):
        return False
    return not any(torch.is_tensor(v) for v in vars(support).values())


def _elementwise(support):
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def check_rows(
    model, guide, sites, data, name: str = "data", device=None, transform=None, dtype=None
) -> None:
    """Check every row of ``data`` against the supports of ``sites`` (:func:`observed_sites`).

    Sites that observe a data tensor as given are checked on it directly; otherwise the model
    is run (on ``device``) on chunks of rows with the guide's draws. With a ``transform`` (of
    ``fit``), each chunk is transformed and converted to ``dtype`` first, and also checked
    for NaN/Inf and by the model's owner. Draws are made under a forked generator.
    """
    if not sites and transform is None:
        return
    device = data[0].device if device is None else torch.device(device)
    num_data = data[0].shape[0]
    direct = all(site.source is not None for site in sites)
    # Transformed rows are new tensors: made a model run's worth at a time, memory stays small.
    step = _ROWS_PER_CHECK if direct and transform is None else _ROWS_PER_RUN
    label = name if transform is None else f"{name} as transformed"
    outside = {s.name: _Outside(s.name, s.fn, label, data[0].shape) for s in sites}
    with forked_rng(device), torch.no_grad(), pyro.validation_enabled(False):
        for start in range(0, num_data, step):
            rows = rows_on(data, start, start + step, device)
            if transform is not None:
                rows = _transformed_rows(model, rows, transform, dtype, name, start)
            if direct:
                for site in sites:
                    value = rows[site.source].reshape(-1, *site.shape)
                    outside[site.name].add(value, start)
                continue
            _, model_trace = trace_pair(model, guide, *rows)
            for site in sites:
                if site.name in model_trace.nodes:
                    outside[site.name].add(model_trace.nodes[site.name]["value"], start)
    for counted in outside.values():
        counted.raise_if_any()


def _transformed_rows(model, rows, transform, dtype, name: str, start: int):
    x = transform(rows[0])
    where = f"{name}[{start}:{start + x.shape[0]}] as transformed"
    check_data(x, where)
    x = as_model_dtype((x,), dtype, where)[0]
    check_owner(model, x, where, first_row=start)
    return (x,) + rows[1:]


class _Outside:
    """Values outside a site's support, counted over chunks of rows, for one message."""

    def __init__(self, site_name: str, fn, name: str, data_shape):
        self.site_name, self.fn, self.name = site_name, fn, name
        self.data_shape = tuple(data_shape)
        self.support = _elementwise(fn.support)
        self.count, self.first, self.ranges = 0, None, []

    def add(self, value: torch.Tensor, start: int) -> None:
        """Count the datapoints of ``value`` (rows start, start + 1, ... of the data)."""
        try:
            inside = self.support.check(value)
        except NotImplementedError:  # a support without a membership test (e.g. Unit's)
            return
        if value.numel():  # the data's range tells their scale (0-255 bytes, say)
            low, high = torch.aminmax(
                value.detach().to(torch.uint8) if value.dtype == torch.bool else value.detach()
            )
            # Kept as tensors: read only for the message, so the check waits for no device.
            self.ranges.append((low, high))
        if isinstance(inside, bool) or bool(inside.all()):
            return
        outside = ~inside
        rows = outside.reshape(outside.shape[0], -1).any(1) if outside.dim() > 0 else outside
        self.count += int(rows.sum()) if outside.dim() > 0 else 1
        if self.first is None:
            self.first = self._index(outside, value, start)

    def _index(self, outside: torch.Tensor, value: torch.Tensor, start: int) -> str:
        flat = first_true(outside)
        index = np.unravel_index(flat, tuple(outside.shape)) if outside.dim() else (0,)
        row = start + int(index[0])
        per_row = int(np.prod(outside.shape[1:], dtype=np.int64))
        if outside.dim() > 0 and per_row == int(np.prod(self.data_shape[1:], dtype=np.int64)):
            # Elementwise, as many values per row as the data: the user's own index.
            within = np.unravel_index(flat % per_row, self.data_shape[1:])
            where = describe_index((row, *within))
        else:
            where = describe_index((row,))
        if outside.shape == value.shape:
            where += f", value {value.reshape(-1)[flat].item():g}"
        return where

    def raise_if_any(self) -> None:
        if not self.count:
            return
        low = min(float(low) for low, _ in self.ranges)
        high = max(float(high) for _, high in self.ranges)
        raise ValueError(
            f"{self.name} do not fit site {self.site_name!r} of the model: "
            f"{_distribution_name(self.fn)} needs values in {self.fn.support}, got "
            f"{self.count} datapoints with values outside it, first at {self.first} (data "
            f"range [{low:g}, {high:g}]); prepare the data for this likelihood (e.g. "
            "binarize for a Bernoulli) or choose a likelihood whose support holds them"
        )


def _distribution_name(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__
