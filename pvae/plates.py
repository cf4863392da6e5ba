"""The ``"data"`` plate: how pvae finds the datapoints of any model and scales minibatches."""

from __future__ import annotations

from pyro import poutine
from pyro.poutine.messenger import Messenger

DATA_PLATE = "data"


class ScaleDataPlate(Messenger):
    """Scale every site inside ``pyro.plate("data", ...)`` as if the plate had ``num_data`` members.

    A model usually writes ``pyro.plate("data", x.shape[0])`` over the minibatch it is given;
    under this handler its per-datapoint sites count ``num_data / batch_size`` times, so the
    loss estimates the full-dataset ELBO, while sites outside the plate (global latents)
    count once, as they must. A plate that already declares the full size through
    ``subsample`` is left as it is.

    Example::

        >>> loss = Trace_ELBO().differentiable_loss(
        ...     ScaleDataPlate(60000)(model), ScaleDataPlate(60000)(guide), batch
        ... )  # doctest: +SKIP
    """

    def __init__(self, num_data: int):
        super().__init__()
        self.num_data = num_data

    def _pyro_sample(self, msg) -> None:
        for frame in msg["cond_indep_stack"]:
            if frame.name == DATA_PLATE:
                declared = frame.full_size if frame.full_size is not None else frame.size
                msg["scale"] = msg["scale"] * (self.num_data / declared)
                return


def inspect_model(model, guide, *args, traces: tuple | None = None) -> int:
    """Check that ``model`` has a sample site in the ``"data"`` plate; return its plate nesting.

    The nesting (how many batch dimensions the plates of model and guide use) lets
    vectorized particles go to the left of them without Pyro guessing it again. ``traces``
    are the (guide, model) traces of :func:`trace_pair`, when already made.

    Example::

        >>> inspect_model(vae.model, vae.guide, x[:2])  # doctest: +SKIP
        1
    """
    guide_trace, model_trace = traces if traces is not None else trace_pair(model, guide, *args)
    sites = [
        site
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
    ]
    if not any(frame.name == DATA_PLATE for site in sites for frame in site["cond_indep_stack"]):
        raise ValueError(
            "the model has no sample site inside pyro.plate('data', ...): put the per-datapoint "
            "sites (latents and observations) in a plate named 'data' over the batch, e.g. "
            "`with pyro.plate('data', x.shape[0]):`, so that pvae can scale minibatches "
            "and compute per-datapoint bounds"
        )
    dims = [frame.dim for site in sites for frame in site["cond_indep_stack"] if frame.vectorized]
    return -min(dims) if dims else 0


def trace_pair(model, guide, *args) -> tuple[poutine.Trace, poutine.Trace]:
    """Traces of one run of the guide and of the model replayed on its latents."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return guide_trace, model_trace
