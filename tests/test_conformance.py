"""Conformance: every model/guide structure x every objective matches a reference or is refused.

Each structure is a small float64 Pyro model/guide pair with parameters in Pyro's store. For
each objective pvae trains with (:func:`pvae.objectives.choose_objective`, as :func:`pvae.fit`
does), the loss and its gradients are compared on shared draws with a reference that does not
use pvae's code:

- ``elbo`` and ``meanfield``: Pyro's Trace_ELBO / TraceEnum_ELBO / TraceMeanField_ELBO, with the
  same random seed (the same guide draws and subsample indices);
- ``iwae``, ``stl`` and ``dreg``: the formulas written out below on the guide draws pvae made
  (recorded from its first guide run): the IWAE bound's autograd (Burda et al., 2016), the
  ELBO with log q's parameters stopped (Roeder et al., 2017), and Tucker et al.'s (2019) doubly
  reparameterized gradient Σ_k w̃_k² ∂log w_k/∂z_k · dz_k/dφ, with the partial derivative in z
  taken with q's dependence on earlier latents kept;
- ``log_likelihood``: in expectation, the IWAE objective's value on independent draws (for a
  label enumerated in the guide, the bound with it summed inside each weight,
  log (1/K) Σ_k Σ_y p(x, y, z_k^y) / q(z_k^y | x, y), written out as a loop over y).

Combinations without a valid per-datapoint bound must raise a ``ValueError`` that names the
structure. The table of outcomes is ``EXPECTED``; docs/conformance.md shows it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import transforms
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

import pvae
from pvae import log_likelihood
from pvae.infer.capture import CaptureFailed, capture_loss
from pvae.infer.objectives import ScaleDataPlate, choose_objective
from pvae.infer.plates import inspect_model, trace_pair

N, D = 3, 2
OBJECTIVES = ["elbo", "meanfield", "stl", "iwae", "dreg"]
K = 4


def param(name, *shape, positive=False):
    """A float64 parameter with a fixed, name-dependent start (no global RNG draw)."""
    offset = sum(map(ord, name)) % 7

    def init():
        values = 0.4 * torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) + offset)
        values = values.reshape(shape)
        return values.exp() if positive else values

    constraint = dist.constraints.positive if positive else dist.constraints.real
    return pyro.param(name, init, constraint=constraint)


def data():
    return torch.tensor([[0.5, -1.0], [1.5, 0.3], [-0.7, 0.9]], dtype=torch.float64)


def gaussian_guide(name, inputs, size=D):
    loc = inputs @ param(f"{name}_w", inputs.shape[-1], size) + param(f"{name}_b", size)
    return dist.Normal(loc, param(f"{name}_s", size, positive=True)).to_event(1)


def decoder(z, name="dec"):
    return z @ param(f"{name}_w", z.shape[-1], D) + param(f"{name}_b", D)


# ----------------------------------------------------------------------------- structures
class Local:
    """z ~ N(0, I), x ~ N(Wz + b, 0.5) per datapoint; q(z|x) Gaussian."""

    def prior(self, x):
        return dist.Normal(torch.zeros(x.shape[0], D, dtype=x.dtype), 1.0).to_event(1)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", gaussian_guide("q", x))


class GlobalAndLocal(Local):
    """A global latent g outside the data plate, shared by all datapoints."""

    def model(self, x):
        g = pyro.sample("g", dist.Normal(torch.zeros(D, dtype=x.dtype), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", dist.Normal(decoder(z) + g, 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.sample("g", dist.Normal(param("g_loc", D), param("g_s", D, positive=True)).to_event(1))
        super().guide(x)


class NestedPlates(Local):
    """The observation in a feature plate nested inside the data plate."""

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            prior = dist.Normal(torch.zeros(x.shape[0], 1, D, dtype=x.dtype), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            z = z.sum(-1) * param("mix", D)
            with pyro.plate("features", D, dim=-1):
                pyro.sample("x", dist.Normal(z + param("dec_b", D), 0.5), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            q = gaussian_guide("q", x).base_dist
            pyro.sample("z", dist.Normal(q.loc[:, None, :], q.scale[:, None, :]).to_event(1))


class SubsampledNestedPlate(Local):
    """The feature plate nested inside the data plate subsamples itself (1 of 2 features)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            prior = dist.Normal(torch.zeros(x.shape[0], 1, D, dtype=x.dtype), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            loc = z.sum(-1) * param("mix", D) + param("dec_b", D)
            with pyro.plate("features", D, subsample_size=1, dim=-1) as j:
                pyro.sample("x", dist.Normal(loc[..., j], 0.5), obs=x[:, j])

    guide = NestedPlates.guide


class UserSubsample(Local):
    """The data plate subsamples 2 of the 3 datapoints itself, in model and guide."""

    def model(self, x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as i:
            z = pyro.sample("z", dist.Normal(torch.zeros(2, D, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x[i])

    def guide(self, x):
        with pyro.plate("data", x.shape[0], subsample_size=2) as i:
            pyro.sample("z", gaussian_guide("q", x[i]))


class Masked(Local):
    """One feature of one datapoint is missing: its likelihood term is masked out."""

    def model(self, x):
        observed = torch.ones_like(x, dtype=torch.bool)
        observed[1, 0] = False
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            likelihood = dist.Normal(decoder(z), 0.5).mask(observed).to_event(1)
            pyro.sample("x", likelihood, obs=x)


class ModelScale(Local):
    """A tempered likelihood: poutine.scale(0.5) on the observation."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            with poutine.scale(scale=0.5):
                pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)


class Factors(Local):
    """A model factor and a reparameterized guide factor, both per datapoint."""

    guide_factor_has_rsample = True

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.factor("smooth", -0.3 * (z[..., 0] - z[..., 1]) ** 2)
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", gaussian_guide("q", x))
            penalty = -0.1 * param("pen", 1) * z.pow(2).sum(-1)
            pyro.factor("guide_penalty", penalty, has_rsample=self.guide_factor_has_rsample)


class ScoreFunctionGuideFactor(Factors):
    """A guide factor declared without a reparameterized path (has_rsample=False)."""

    guide_factor_has_rsample = False


class HierarchicalGuide(Local):
    """Two latent layers; the guide draws z2 given z1 (a ladder-style dependent guide)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior(x))
            z1 = pyro.sample("z1", dist.Normal(decoder(z2, "top"), 0.8).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z1), 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", gaussian_guide("q1", x))
            pyro.sample("z2", gaussian_guide("q2", z1))


class FlowGuide(Local):
    """q(z|x) an inverse autoregressive flow on a Gaussian (a TransformedDistribution)."""

    def __init__(self):
        pyro.set_rng_seed(3)
        self.flow = transforms.affine_autoregressive(D, hidden_dims=[4]).double()

    def guide(self, x):
        pyro.module("flow", self.flow)
        with pyro.plate("data", x.shape[0]):
            base = gaussian_guide("q", x)
            pyro.sample("z", dist.TransformedDistribution(base, [self.flow]))


class DiscreteGuideLatent(Local):
    """A binary latent drawn by the guide (no rsample: a score-function estimator)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.full((x.shape[0],), 0.3, dtype=x.dtype)))
            loc = c[..., None] * param("shift", D)
            pyro.sample("x", dist.Normal(loc, 0.7).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=x @ param("c_w", D)))


class EnumeratedModelLatent(Local):
    """A mixture prior: the component c is enumerated in the model, not drawn by the guide."""

    def model(self, x):
        weights = torch.tensor([0.3, 0.7], dtype=x.dtype)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(weights), infer={"enumerate": "parallel"})
            locs = param("component_locs", 2, D)
            z = pyro.sample("z", dist.Normal(locs[c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)


class EnumeratedGuideLatent(Local):
    """Kingma et al.'s M2: the label y enumerated in the guide, z drawn given x and y."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            probs = torch.full((x.shape[0], 3), 1 / 3, dtype=x.dtype)
            y = pyro.sample("y", dist.Categorical(probs))
            z = pyro.sample("z", self.prior(x))
            loc = decoder(z) + param("label_locs", 3, D)[y]
            pyro.sample("x", dist.Normal(loc, 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            logits = x @ param("y_w", D, 3)
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            z_loc = x @ param("q_w", D, D) + param("y_locs", 3, D)[y]
            pyro.sample("z", dist.Normal(z_loc, param("q_s", D, positive=True)).to_event(1))


MATCH = "matches"
EXPECTED = {
    # structure: {objective or "log_likelihood": MATCH, or the refusal's message}
    Local: {},
    GlobalAndLocal: {
        o: "global latent 'g' is outside pyro.plate"
        for o in ("stl", "iwae", "dreg", "log_likelihood")
    },
    NestedPlates: {},
    SubsampledNestedPlate: {
        o: "sits in plate 'features', subsampled" for o in ("stl", "iwae", "dreg", "log_likelihood")
    },
    UserSubsample: {
        o: "site 'z' has 2 entries in the data plate for"
        for o in ("stl", "iwae", "dreg", "log_likelihood")
    },
    Masked: {},
    ModelScale: {"log_likelihood": "site 'x' is scaled"},
    Factors: {},
    ScoreFunctionGuideFactor: {
        o: "guide site 'guide_penalty' is not reparameterized"
        for o in ("meanfield", "stl", "iwae", "dreg")
    },
    HierarchicalGuide: {},
    FlowGuide: {},
    DiscreteGuideLatent: {
        o: "guide site 'c' is not reparameterized" for o in ("meanfield", "stl", "iwae", "dreg")
    },
    EnumeratedModelLatent: {"meanfield": "no analytic KL for enumerated sites ('c')"},
    EnumeratedGuideLatent: {
        "meanfield": "no analytic KL for enumerated sites ('y')",
        **{o: "no valid form when the guide enumerates 'y'" for o in ("stl", "dreg")},
    },
}
# Pyro's TraceMeanField_ELBO needs a KL or falls back to Trace_ELBO's estimate per site.
STRUCTURES = {cls.__name__: cls for cls in EXPECTED}


def expected(structure, objective) -> str:
    return EXPECTED[structure].get(objective, MATCH)


def nesting_of(structure, x) -> int:
    with torch.no_grad():
        return inspect_model(structure.model, structure.guide, x)


def parameters() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store.get_param(name).unconstrained() for name in sorted(store.keys())}


def gradients(loss, params):
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True)
    pairs = zip(params.items(), grads, strict=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in pairs}


def pyro_reference(objective, structure, scaled_model, scaled_guide, nesting):
    if objective == "meanfield":
        return TraceMeanField_ELBO(max_plate_nesting=nesting)
    enumerates = isinstance(structure, (EnumeratedModelLatent, EnumeratedGuideLatent))
    return (TraceEnum_ELBO if enumerates else Trace_ELBO)(max_plate_nesting=nesting)


# ----------------------------------------------------------------- per-datapoint references
def per_datapoint(trace, particle_dim: int):
    """Σ of scale · mask · log p over every sample site but the particle and data dims: [K, N].

    The minibatch scale (ScaleDataPlate's) is taken out; the caller multiplies the sum of
    the bounds by it.
    """
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        log_p = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:
            log_p = log_p * site["mask"]
        log_p = log_p * site["scale"] / MINIBATCH
        log_p = log_p.reshape((1,) * (particle_dim - log_p.dim()) + log_p.shape)
        data = next(f for f in site["cond_indep_stack"] if f.name == "data")
        log_p = log_p.movedim(data.dim, 1)
        total = total + log_p.reshape(log_p.shape[0], log_p.shape[1], -1).sum(-1)
    return total


MINIBATCH = 10.0  # ScaleDataPlate(10 * batch) in every comparison


def model_log_joint(structure, x, values, nesting):
    """log p(x, z) [K, N] with the guide's draws; an enumerated c summed by an explicit loop."""

    def joint(extra):
        conditioned = poutine.condition(structure.model, data={**values, **extra})
        with pyro.plate("particles", K, dim=-(nesting + 1)):
            trace = poutine.trace(
                ScaleDataPlate(int(MINIBATCH) * x.shape[0])(conditioned)
            ).get_trace(x)
        return per_datapoint(trace, nesting + 1)

    if not isinstance(structure, EnumeratedModelLatent):
        return joint({})
    shape = (K, x.shape[0])
    return torch.logsumexp(torch.stack([joint({"c": torch.full(shape, c)}) for c in range(2)]), 0)


def guide_log_density(structure, x, values, nesting):
    conditioned = poutine.condition(structure.guide, data=values)
    with pyro.plate("particles", K, dim=-(nesting + 1)):
        trace = poutine.trace(ScaleDataPlate(int(MINIBATCH) * x.shape[0])(conditioned)).get_trace(x)
    return per_datapoint(trace, nesting + 1)


def guide_draws(structure, x, nesting) -> dict[str, torch.Tensor]:
    """K draws of every guide latent, in a particle plate left of the model's plates."""
    scaled_guide = ScaleDataPlate(int(MINIBATCH) * x.shape[0])(structure.guide)
    with pyro.plate("particles", K, dim=-(nesting + 1)):
        draws = poutine.trace(scaled_guide).get_trace(x)
    return {
        name: site["value"]
        for name, site in draws.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def summed_label_log_weights(structure, x, nesting):
    """log Σ_y p(x, y, z^y) / q(z^y | x, y) [K, N] for the guide-enumerated label: an explicit
    loop over y, z^y drawn by the guide with y fixed, q(y | x) left out of the weight."""
    terms = []
    for label in range(3):
        y = torch.full((K, x.shape[0]), label)
        fixed = poutine.block(poutine.condition(structure.guide, data={"y": y}), hide=["y"])
        with pyro.plate("particles", K, dim=-(nesting + 1)):
            draw = poutine.trace(ScaleDataPlate(int(MINIBATCH) * x.shape[0])(fixed)).get_trace(x)
        values = {"y": y, "z": draw.nodes["z"]["value"]}
        terms.append(
            model_log_joint(structure, x, values, nesting) - per_datapoint(draw, nesting + 1)
        )
    return torch.logsumexp(torch.stack(terms), 0)


def enumerated_label_draws(structure, x, nesting) -> torch.Tensor:
    """z^y for every label at once, [3, K, N, D], as Pyro's parallel enumeration draws them."""
    scaled_guide = ScaleDataPlate(int(MINIBATCH) * x.shape[0])(structure.guide)
    with pyro.plate("particles", K, dim=-(nesting + 1)):
        enumerated = poutine.enum(scaled_guide, first_available_dim=-(nesting + 2))
        draws = poutine.trace(enumerated).get_trace(x)
    return draws.nodes["z"]["value"]


def summed_label_reference(structure, x, params, nesting, seed):
    """The IWAE loss with y summed inside each weight, from the formula: for each label, the
    model's and the guide's densities at that label's draws, on pvae's draws of z^y."""
    pyro.set_rng_seed(seed)
    z = enumerated_label_draws(structure, x, nesting)
    terms = []
    for label in range(3):
        values = {"y": torch.full((K, x.shape[0]), label), "z": z[label]}
        log_q = guide_log_density(structure, x, values, nesting)
        log_q_y = dist.Categorical(logits=x @ param("y_w", D, 3)).log_prob(values["y"])
        terms.append(model_log_joint(structure, x, values, nesting) - (log_q - log_q_y))
    bound = torch.logsumexp(torch.logsumexp(torch.stack(terms), 0), 0) - math.log(K)
    loss = -MINIBATCH * bound.sum()
    return loss, gradients(loss, params)


def particle_reference(objective, structure, x, params, nesting, seed):
    """(value, gradients) of pvae's particle objective, from the formulas, on the same draws.

    The guide is run again under the seed pvae's objective ran under: the same draws, in a
    graph of their own (pvae's DReG puts gradient hooks on the draws it makes).
    """
    if isinstance(structure, EnumeratedGuideLatent):
        return summed_label_reference(structure, x, params, nesting, seed)
    pyro.set_rng_seed(seed)
    values = guide_draws(structure, x, nesting)
    log_p = model_log_joint(structure, x, values, nesting)
    log_w = log_p - guide_log_density(structure, x, values, nesting)
    scale = MINIBATCH
    bound = torch.logsumexp(log_w, 0) - math.log(K)
    if objective == "iwae":
        loss = -scale * bound.sum()
        return loss, gradients(loss, params)
    detached = {name: value.detach() for name, value in values.items()}
    log_q_fixed_z = guide_log_density(structure, x, detached, nesting)
    if objective == "stl":
        loss = -scale * (log_w + log_q_fixed_z - log_q_fixed_z.detach()).mean(0).sum()
        return loss, gradients(loss, params)
    # DReG: model parameters get Σ w̃ ∇θ log p; guide parameters Σ w̃² ∂log w/∂z · dz/dφ.
    weights = torch.softmax(log_w.detach(), 0)
    leaves = {name: value.detach().requires_grad_() for name, value in values.items()}
    log_w_at_leaves = model_log_joint(structure, x, leaves, nesting) - guide_log_density(
        structure, x, leaves, nesting
    )
    partials = torch.autograd.grad(log_w_at_leaves.sum(), list(leaves.values()))
    grads = gradients(-scale * (weights * log_p).sum(), params)
    guide_params = {n: p for n, p in params.items() if n in parameters_of(structure.guide, x)}
    outputs = [
        -scale * weights.reshape(weights.shape + (1,) * (v.dim() - 2)) ** 2 * partial
        for v, partial in zip(values.values(), partials, strict=True)
    ]
    path = torch.autograd.grad(
        list(values.values()), list(guide_params.values()), outputs, allow_unused=True
    )
    for name, g in zip(guide_params, path, strict=True):
        grads[name] = torch.zeros_like(grads[name]) if g is None else g
    return -scale * bound.sum(), grads


def reference_of(objective, structure, model, guide, x, params, nesting):
    """The reference's loss and gradients under seed 7: Pyro's estimator for ``elbo`` and
    ``meanfield``, the written-out formula for the particle objectives."""
    if objective in ("elbo", "meanfield"):
        reference = pyro_reference(objective, structure, model, guide, nesting)
        pyro.set_rng_seed(7)
        expected_loss = reference.differentiable_loss(model, guide, x)
        return expected_loss, gradients(expected_loss, params)
    return particle_reference(objective, structure, x, params, nesting, seed=7)


def parameters_of(program, x) -> list[str]:
    with poutine.trace(param_only=True) as capture, torch.no_grad():
        program(x)
    return list(capture.trace.nodes)


# ------------------------------------------------------------------------------------ tests
@pytest.fixture(autouse=True)
def float64_by_default(float64):
    # Pyro's autoregressive flow makes its inverse's buffers in the default dtype.
    yield


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_objective_matches_its_reference_or_refuses(name, objective):
    structure = STRUCTURES[name]()
    x = data()
    outcome = expected(type(structure), objective)
    nesting = nesting_of(structure, x) if outcome == MATCH or objective != "log" else 0
    params = parameters()
    scale = ScaleDataPlate(int(MINIBATCH) * x.shape[0])
    model, guide = scale(structure.model), scale(structure.guide)
    num_particles = K if objective in ("stl", "iwae", "dreg") else 1
    with pyro.validation_enabled(True):
        traces = trace_pair(model, guide, x)
    if outcome != MATCH:
        with pytest.raises(ValueError, match=_escaped(outcome)):
            ours = choose_objective(objective, num_particles, nesting, traces)
            ours.differentiable_loss(model, guide, x)
        return
    ours = choose_objective(objective, num_particles, nesting, traces)
    ours.differentiable_loss(model, guide, x)  # compare the steady state: a step after the first
    pyro.set_rng_seed(7)
    loss = ours.differentiable_loss(model, guide, x)
    grads = gradients(loss, params)
    expected_loss, expected_grads = reference_of(
        objective, structure, model, guide, x, params, nesting
    )
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-10)
    for param_name, grad in grads.items():
        torch.testing.assert_close(
            grad, expected_grads[param_name], rtol=1e-8, atol=1e-10, msg=param_name
        )
    assert any(bool(g.abs().sum() > 0) for g in grads.values())


# The flow's inverse, which STL and DReG evaluate at detached draws, reads data values
# (Pyro's autoregressive inverse): capture refuses, and fit's compile runs these eagerly.
NOT_CAPTURED = {("FlowGuide", "stl"), ("FlowGuide", "dreg")}


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_the_captured_objective_matches_the_same_reference(name, objective):
    """fit's captured step (compile=...): the graph traced from pvae's own estimators gives
    the reference's loss and gradients too; Pyro's estimators refuse capture (run eagerly)."""
    structure = STRUCTURES[name]()
    x = data()
    if expected(type(structure), objective) != MATCH:
        return  # refused before any step, as above
    nesting = nesting_of(structure, x)
    params = parameters()
    scale = ScaleDataPlate(int(MINIBATCH) * x.shape[0])
    model, guide = scale(structure.model), scale(structure.guide)
    num_particles = K if objective in ("stl", "iwae", "dreg") else 1
    with pyro.validation_enabled(True):
        ours = choose_objective(objective, num_particles, nesting, trace_pair(model, guide, x))
    leaves = list(params.values())

    def loss(x):
        return ours.differentiable_loss(model, guide, x)

    if type(ours).__module__.startswith("pyro.") or (name, objective) in NOT_CAPTURED:
        with pytest.raises(CaptureFailed):  # fit's compile then runs the step eagerly
            capture_loss(loss, leaves, (x,))
        return
    replay = capture_loss(loss, leaves, (x,))
    pyro.set_rng_seed(7)
    captured_loss, captured_grads = replay(x)
    expected_loss, expected_grads = reference_of(
        objective, structure, model, guide, x, params, nesting
    )
    torch.testing.assert_close(captured_loss, expected_loss.detach(), rtol=1e-10, atol=1e-10)
    for (param_name, _), grad in zip(params.items(), captured_grads, strict=True):
        torch.testing.assert_close(
            grad, expected_grads[param_name], rtol=1e-8, atol=1e-10, msg=param_name
        )


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_log_likelihood_estimates_the_iwae_bound_or_refuses(name):
    # 200 copies of each datapoint: 200 independent IWAE_K estimates of each, from pvae's
    # estimator and from the reference log-weights, whose means must agree.
    structure, copies = STRUCTURES[name](), 200
    x = data().repeat(copies, 1)
    outcome = expected(type(structure), "log_likelihood")
    if outcome != MATCH:
        with pytest.raises(ValueError, match=_escaped(outcome)):
            log_likelihood(structure.model, structure.guide, x, K, seed=0)
        return
    ours = log_likelihood(structure.model, structure.guide, x, K, seed=0).per_datapoint
    nesting = nesting_of(structure, data())
    pyro.set_rng_seed(1)
    with torch.no_grad():
        if isinstance(structure, EnumeratedGuideLatent):
            log_w = summed_label_log_weights(structure, x, nesting)
        else:
            values = guide_draws(structure, x, nesting)
            log_w = model_log_joint(structure, x, values, nesting)
            log_w = log_w - guide_log_density(structure, x, values, nesting)
    theirs = torch.logsumexp(log_w, 0) - math.log(K)
    ours, theirs = ours.reshape(copies, N), theirs.reshape(copies, N)
    standard_error = ((ours.var(0) + theirs.var(0)) / copies).sqrt()
    assert bool(((ours.mean(0) - theirs.mean(0)).abs() < 5 * standard_error).all())
    assert bool((standard_error > 0).all())


COLUMNS = [*OBJECTIVES, "log_likelihood"]
TABLE = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def conformance_table() -> str:
    """The outcome of every structure x objective as markdown (docs/conformance.md)."""
    reasons: list[str] = []
    lines = [
        "# Conformance: model/guide structures x objectives",
        "",
        "Made by `python tests/test_conformance.py > docs/conformance.md`; the suite checks",
        "that this page is its own table. ✓: pvae's loss and gradients equal the reference on",
        "shared draws (Pyro's Trace_ELBO, TraceEnum_ELBO or TraceMeanField_ELBO for `elbo` and",
        "`meanfield`; the IWAE, STL and DReG formulas written out for the others), and",
        "`log_likelihood` estimates the same IWAE bound (a label enumerated in the guide",
        "summed inside each weight). ✗ n: refused with a `ValueError` whose message contains",
        "reason n below. Every ✓ of `stl`, `iwae` and `dreg`, and of `elbo` where pvae's own",
        "estimator takes it, holds for the step `fit(compile=...)` captures and replays too;",
        "Pyro's estimators (`meanfield`, and `elbo` where Trace_ELBO or TraceEnum_ELBO runs)",
        "check for NaN on the host, refuse capture and run eagerly, as do `stl` and `dreg` with",
        "the flow guide (its inverse reads data values).",
        "",
        "| structure | " + " | ".join(f"`{c}`" for c in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for structure in EXPECTED:
        cells = []
        for column in COLUMNS:
            outcome = expected(structure, column)
            if outcome == MATCH:
                cells.append("✓")
                continue
            if outcome not in reasons:
                reasons.append(outcome)
            cells.append(f"✗ {reasons.index(outcome) + 1}")
        summary = structure.__doc__.split("\n")[0].replace("|", "\\|")
        lines.append(f"| {structure.__name__}: {summary} | " + " | ".join(cells) + " |")
    lines += ["", "Reasons:", ""]
    lines += [f"{i}. {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines) + "\n"


def test_the_documented_table_is_the_suite_s():
    assert TABLE.read_text() == conformance_table()


if __name__ == "__main__":
    print(conformance_table(), end="")


def test_estimate_elbo_and_fit_s_held_out_elbo_sum_out_a_guide_enumerated_latent():
    # A two-component mixture with the component enumerated in the guide and nothing else
    # random: the ELBO is exact, Σ_c q(c) [log p(x, c) - log q(c)] per datapoint.
    def model(x):
        loc = pyro.param("loc", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)))
            pyro.sample("x", dist.Normal(loc[c][..., None], 1.0).to_event(1), obs=x)

    def guide(x):
        logits = pyro.param("logits", torch.tensor([0.3, -0.2]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})

    x = torch.linspace(-2, 2, 8)[:, None]
    log_q = torch.log_softmax(torch.tensor([0.3, -0.2]), 0)
    log_joint = math.log(0.5) + dist.Normal(torch.tensor([-1.0, 1.0]), 1.0).log_prob(x)
    exact = (log_q.exp() * (log_joint - log_q)).sum(-1).mean().item()
    assert pvae.estimate_elbo(model, guide, x) == pytest.approx(exact, rel=1e-6)
    result = pvae.fit(model, guide, x, num_epochs=1, batch_size=8, held_out=x)
    assert math.isfinite(result.history[0].held_out_elbo)
