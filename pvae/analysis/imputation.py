"""Fill in missing pixels by posterior inference on the observed ones.

A VAE defines p(x_obs, x_hid, z) = p(z) p(x_obs|z) p(x_hid|z) with pixels independent given
z, so the hidden part of a partially observed image has the posterior predictive

    p(x_hid | x_obs) = ∫ p(x_hid | z) p(z | x_obs) dz,    p(z | x_obs) ∝ p(z) p(x_obs | z).

:func:`masked_model` turns a model into one that scores only the observed pixels; the
posterior p(z | x_obs) is then reached by self-normalized importance sampling with the guide
as proposal (:func:`impute_importance`) or by NUTS in the latent space (:func:`impute_nuts`).
Both return an :class:`Imputation`: the posterior-mean completion E[x | x_obs] and
completions E[x | z] for posterior draws of z, with the observed pixels kept as they are.

The guide q(z|x) was trained on whole images, so a partially observed image needs a defined
input: :func:`masked_guide` sets the hidden pixels to ``fill`` (the examples use the
per-pixel mean of the training images, the guess that says nothing about this image). The
importance weights correct for whatever the guide makes of that input, but a poor input
makes a poor proposal: :attr:`Imputation.ess` says how many draws are effectively left.

Any model and guide in the form of :class:`pvae.VAE` work (``vae.model``, ``vae.guide``;
conditional ones too, with the labels after ``observed``): per-datapoint sites in
``pyro.plate("data", ...)``, the data observed at one site (``"obs"``) whose pixels are
independent given the latents.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_value
from pyro.poutine.messenger import Messenger

from pvae.infer.log_weights import particle_log_weights, sample_sites
from pvae.infer.plates import PARTICLE_PLATE, inspect_model

# Particles x datapoints per vectorized model call: bounds the decoder's outputs (times the
# pixels) to a few hundred MB on the CPU.
_DRAWS_PER_CALL = 50_000


@dataclass(frozen=True)
class Imputation:
    """Completions of partially observed images (observed pixels kept as they were).

    ``mean`` [N, ...] is the posterior-mean completion E[x | x_obs] (for a Bernoulli
    likelihood, the probability that each hidden pixel is on); ``samples`` [S, N, ...] are
    E[x | z] for S posterior draws of z, each a plausible completion; ``latents`` maps each
    latent site to its S draws. ``ess`` [N] is the importance sampler's effective sample size
    and ``log_evidence`` [N] its IWAE estimate of log p(x_obs) (both None for NUTS).
    """

    mean: torch.Tensor
    samples: torch.Tensor
    latents: dict[str, torch.Tensor]
    ess: torch.Tensor | None = None
    log_evidence: torch.Tensor | None = None


def fill_missing(x: torch.Tensor, observed: torch.Tensor, fill) -> torch.Tensor:
    """``x`` where ``observed``, ``fill`` elsewhere (a number, or a tensor such as the data mean).

    Example::

        >>> fill_missing(torch.tensor([[1.0, 1.0]]), torch.tensor([[True, False]]), 0.25)
        tensor([[1.0000, 0.2500]])
    """
    return torch.where(observed, x, torch.as_tensor(fill, dtype=x.dtype, device=x.device))


class _MaskWithinEvent(Messenger):
    """Mask elements inside the event of one observed site; drop every site's scale.

    ``poutine.mask`` masks whole batch elements of a site, but the pixels of an image lie
    inside the event of the observation site: the mask goes onto the per-pixel distribution
    under its ``to_event`` instead (``Distribution.mask``, Pyro's ``MaskedDistribution``).
    Scales (beta, KL warm-up) weigh training objectives; inference needs the model itself.
    """

    def __init__(self, site: str, mask: torch.Tensor):
        super().__init__()
        self.site, self.mask = site, mask

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        msg["scale"] = 1.0
        if msg["name"] != self.site:
            return
        fn, reinterpreted = msg["fn"], 0
        while isinstance(fn, torch.distributions.Independent):
            reinterpreted += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        if fn.event_shape:
            raise ValueError(
                f"the likelihood at site {self.site!r} ({type(fn).__name__}) does not factorize "
                "over pixels (its event is not a to_event of independent pixels), so single "
                "pixels cannot be masked out of it"
            )
        msg["fn"] = fn.mask(self.mask).to_event(reinterpreted)


def masked_model(model, site: str = "obs"):
    """``model`` with only observed pixels scored: ``masked(x, observed, *args)``.

    ``observed`` is a boolean tensor shaped like ``x`` (True: the pixel is seen); the
    likelihood of every hidden pixel is masked out, so hidden entries of ``x`` are never
    read and may hold anything, NaN included. ``*args`` go to ``model`` after ``x`` (e.g.
    the labels of a conditional VAE). Scales inside the model (a beta-VAE's KL weight) are
    dropped: this is the generative model itself.

    Example::

        >>> import pvae
        >>> vae, x = pvae.build_vae(784, z_dim=2, hidden_dims=[8]), torch.rand(3, 784).round()
        >>> observed = torch.zeros_like(x, dtype=torch.bool)
        >>> observed[:, :392] = True  # the top half of 28 x 28 images
        >>> trace = poutine.trace(masked_model(vae.model)).get_trace(x, observed)
        >>> trace.nodes["obs"]["is_observed"]
        True
    """

    def masked(x: torch.Tensor, observed: torch.Tensor, *args) -> None:
        # A NaN at a masked pixel would still poison gradients through torch.where.
        with _MaskWithinEvent(site, observed):
            model(torch.where(observed, x, torch.zeros_like(x)), *args)

    return masked


def masked_guide(guide, fill):
    """``guide`` fed with the hidden pixels set to ``fill``: ``masked(x, observed, *args)``.

    Example::

        >>> guide = masked_guide(vae.guide, fill=train_x.mean(0))  # doctest: +SKIP
    """

    def masked(x: torch.Tensor, observed: torch.Tensor, *args) -> None:
        guide(fill_missing(x, observed, fill), *args)

    return masked


def _check(x: torch.Tensor, observed: torch.Tensor) -> None:
    if not isinstance(observed, torch.Tensor) or observed.dtype != torch.bool:
        raise ValueError("observed must be a boolean tensor (True where a pixel is seen)")
    if observed.shape != x.shape:
        raise ValueError(
            f"observed has shape {tuple(observed.shape)} but x has shape {tuple(x.shape)}"
        )
    if not bool(observed.flatten(1).any(dim=1).all()):
        raise ValueError("every image needs at least one observed pixel")


def _pixel_means(trace, site: str) -> torch.Tensor:
    """E[x | z] of every pixel, hidden ones included, from a masked model's trace."""
    fn = trace.nodes[site]["fn"]
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    if isinstance(fn, MaskedDistribution):
        fn = fn.base_dist
    return fn.mean


@torch.no_grad()
def impute_importance(
    model,
    guide,
    x: torch.Tensor,
    observed: torch.Tensor,
    *args,
    fill,
    num_particles: int = 1000,
    num_draws: int = 8,
    seed: int | None = None,
    site: str = "obs",
) -> Imputation:
    """Complete images by self-normalized importance sampling, proposals from the guide.

    For each image, ``num_particles`` latents z_k ~ q(z | x_filled) (:func:`masked_guide`)
    get weights w_k = p(z_k) p(x_obs | z_k) / q(z_k | x_filled) (:func:`masked_model`); the
    posterior mean is Σ_k w_k E[x | z_k] / Σ_k w_k, and ``num_draws`` latents resampled in
    proportion to the weights give the sample completions. ``seed`` fixes the draws and
    leaves the global random state alone.

    Example::

        >>> result = impute_importance(vae.model, vae.guide, x, observed,
        ...                            fill=train_x.mean(0))  # doctest: +SKIP
        >>> result.mean.shape, result.ess.median()  # doctest: +SKIP
        (torch.Size([100, 784]), tensor(94.3))
    """
    _check(x, observed)
    masked = masked_model(model, site)
    proposal = masked_guide(guide, fill)
    devices = [x.device] if x.device.type == "cuda" else []
    chunk = max(1, _DRAWS_PER_CALL // num_particles)
    parts: dict[str, list] = {"mean": [], "samples": [], "ess": [], "evidence": [], "z": []}
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        if seed is not None:
            torch.manual_seed(seed)
        nesting = inspect_model(masked, proposal, x[:2], observed[:2], *(a[:2] for a in args))
        for start in range(0, x.shape[0], chunk):
            batch = tuple(t[start : start + chunk] for t in (x, observed, *args))
            log_w, guide_trace, model_trace = particle_log_weights(
                masked, proposal, batch, num_particles, nesting
            )
            weights = torch.softmax(log_w.double(), dim=0)  # [K, n]
            means = _pixel_means(model_trace, site)  # [K, n, ...]
            per_pixel = weights.to(means).reshape(*weights.shape, *(1,) * (means.dim() - 2))
            mean = (per_pixel * means).sum(0)
            picked = torch.multinomial(weights.T, num_draws, replacement=True).T  # [S, n]
            columns = torch.arange(picked.shape[1], device=picked.device)
            parts["mean"].append(torch.where(batch[1], batch[0], mean))
            parts["samples"].append(torch.where(batch[1], batch[0], means[picked, columns]))
            parts["z"].append(
                {name: s["value"][picked, columns] for name, s in _latents(guide_trace)}
            )
            parts["ess"].append(1 / (weights**2).sum(0))
            parts["evidence"].append(torch.logsumexp(log_w.double(), 0) - math.log(num_particles))
    return Imputation(
        mean=torch.cat(parts["mean"]),
        samples=torch.cat(parts["samples"], dim=1),
        latents={name: torch.cat([z[name] for z in parts["z"]], 1) for name in parts["z"][0]},
        ess=torch.cat(parts["ess"]).float(),
        log_evidence=torch.cat(parts["evidence"]),
    )


def _latents(trace):
    """(name, site) of the latent sites of a guide trace (values [K, n, ...])."""
    return [(name, site) for name, site in sample_sites(trace) if not site["is_observed"]]


def impute_nuts(
    model,
    guide,
    x: torch.Tensor,
    observed: torch.Tensor,
    *args,
    fill,
    num_samples: int = 100,
    warmup_steps: int = 100,
    max_tree_depth: int = 6,
    jit_compile: bool = True,
    seed: int | None = None,
    site: str = "obs",
) -> tuple[Imputation, MCMC]:
    """Complete images from NUTS draws of the latents' posterior p(z | x_obs).

    One chain of Pyro's NUTS (Hoffman & Gelman, JMLR 2014) samples the latents of all images
    together: the target has N x z_dim dimensions and factorizes over the images. It starts
    at the guide's mean for the filled images (:func:`masked_guide`), adapts its step size
    and a diagonal mass matrix during ``warmup_steps`` and keeps ``num_samples`` draws; the
    posterior mean is the average of E[x | z] over them, and each draw is a sample
    completion. ``jit_compile`` traces the potential energy with the PyTorch JIT (about 6x
    faster on the CPU than re-running Pyro's effect handlers at every leapfrog step; the
    draws are the same). Returns the :class:`Imputation` and the ``MCMC`` object, whose
    ``diagnostics()`` hold the effective sample size of every coordinate. ``seed`` fixes the
    draws and leaves the global random state alone. The networks' weights (every parameter
    in Pyro's parameter store) are frozen while the chain runs, and trainable again after.

    Example::

        >>> result, mcmc = impute_nuts(vae.model, vae.guide, x[:20], observed[:20],
        ...                            fill=train_x.mean(0))  # doctest: +SKIP
    """
    _check(x, observed)
    masked = masked_model(model, site)
    data = (x, observed, *args)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            start = poutine.trace(masked_guide(guide, fill)).get_trace(*data)
        kernel = NUTS(
            masked,
            init_strategy=init_to_value(values={n: _centre(s) for n, s in _latents(start)}),
            max_tree_depth=max_tree_depth,
            jit_compile=jit_compile,
            ignore_jit_warnings=True,
        )
        mcmc = MCMC(kernel, num_samples, warmup_steps=warmup_steps, disable_progbar=True)
        # Only the latents move: the networks' weights are frozen while the chain runs (a
        # traced potential must not hold weights that require gradients). One trace
        # registers the model's modules with Pyro's parameter store, where they are found.
        with torch.no_grad():
            poutine.trace(masked).get_trace(*data)
        store = pyro.get_param_store()
        frozen = [p for _, p in store.named_parameters() if p.requires_grad]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            with warnings.catch_warnings():
                # Pyro's jit_compile uses torch.jit.trace, which PyTorch calls deprecated, and
                # pyro.module notes the frozen weights.
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* deprecated")
                warnings.filterwarnings("ignore", message=".*because requires_grad=False")
                mcmc.run(*data)
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
    latents = {name: value.detach() for name, value in mcmc.get_samples().items()}
    with pyro.validation_enabled(False):
        nesting = inspect_model(masked, masked_guide(guide, fill), *(t[:2] for t in data))
        samples = _complete(masked, data, latents, nesting, site)
    return Imputation(mean=samples.mean(0), samples=samples, latents=latents), mcmc


def _centre(site) -> torch.Tensor:
    """The guide's mean where it has one (e.g. a Gaussian's location), else its draw."""
    try:
        return site["fn"].mean.detach()
    except NotImplementedError:
        return site["value"].detach()


@torch.no_grad()
def _complete(masked, data, latents: dict[str, torch.Tensor], nesting: int, site: str):
    """Completions E[x | z] [S, N, ...] for S latent draws of every datapoint."""
    num_draws = next(iter(latents.values())).shape[0]
    with pyro.plate(PARTICLE_PLATE, num_draws, dim=-(nesting + 1)):
        trace = poutine.trace(poutine.condition(masked, data=latents)).get_trace(*data)
    return torch.where(data[1], data[0], _pixel_means(trace, site))
