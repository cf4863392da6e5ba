"""The ``"data"`` plate: how pvae finds the datapoints of any model and scales minibatches."""

from __future__ import annotations

from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import get_plates
from pyro.poutine.util import site_is_subsample

DATA_PLATE = "data"
# The plate pvae vectorizes particles in, left of the model's own plates.
PARTICLE_PLATE = "iwae_particles"


def in_particle_plate() -> bool:
    """Whether the code runs inside the plate that vectorizes an importance-weighted
    objective's particles (a model can refuse what only the ELBO objectives honour).

    Example::

        >>> in_particle_plate()
        False
    """
    return any(frame.name == PARTICLE_PLATE for frame in get_plates())


# Where ScaleDataPlate records the factor it applied, so that per-datapoint bounds can tell the
# minibatch scale apart from scales the model sets itself (poutine.scale, nested subsampling).
MINIBATCH_SCALE = "_pvae_minibatch_scale"


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

    def __init__(self, num_data: int, others: float = 1.0, rows: int | None = None):
        super().__init__()
        self.num_data, self.others, self.rows = num_data, others, rows

    def _pyro_sample(self, msg) -> None:
        factor = self._factor(msg)
        if factor is not None:
            msg["scale"] = msg["scale"] * factor
        elif self.others != 1.0:
            msg["scale"] = msg["scale"] * self.others

    def _pyro_post_sample(self, msg) -> None:
        # Recorded after sampling: poutine.replay swaps the site's infer dict for the guide's
        # when it replays a latent, which would drop a record made before.
        factor = self._factor(msg)
        if factor is not None:
            msg["infer"][MINIBATCH_SCALE] = factor

    def _factor(self, msg) -> float | None:
        for frame in msg["cond_indep_stack"]:
            if frame.name == DATA_PLATE:
                declared = frame.full_size if frame.full_size is not None else frame.size
                if declared == -1:  # pyro.plate("data") without a size: the rows given
                    if self.rows is None:
                        raise ValueError(
                            "pyro.plate('data') has no size: give it one, e.g. "
                            "pyro.plate('data', x.shape[0])"
                        )
                    declared = self.rows
                return self.num_data / declared
        return None


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
    _check_latents_have_guide_sites(guide_trace, model_trace)
    dims = [frame.dim for site in sites for frame in site["cond_indep_stack"] if frame.vectorized]
    return -min(dims) if dims else 0


def enumerated(site) -> bool:
    """Whether a site is summed out by enumeration (``infer={"enumerate": "parallel"}``)."""
    return bool(site["infer"].get("enumerate"))


def _check_latents_have_guide_sites(guide_trace, model_trace) -> None:
    """Every model latent is either drawn by the guide or enumerated; Trace_ELBO would only
    warn and draw it from the prior, which gives a number that bounds nothing useful."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if name in guide_trace.nodes or enumerated(site):
            continue
        raise ValueError(
            f"model latent {name!r} has no site in the guide: sample it in the guide too "
            "(every latent needs q), or, if it is discrete, sum it out exactly with "
            f"pyro.sample({name!r}, ..., infer={{'enumerate': 'parallel'}})"
        )


def trace_pair(model, guide, *args) -> tuple[poutine.Trace, poutine.Trace]:
    """Traces of one run of the guide and of the model replayed on its latents."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return guide_trace, model_trace
