"""The VAE as a Pyro model/guide pair around an encoder and a decoder network."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.util import is_validation_enabled
from torch import nn
from torch.nn import functional

from pvae.guides import GaussianGuide, make_guide
from pvae.likelihoods import BernoulliLikelihood, make_likelihood
from pvae.log_weights import PARTICLE_PLATE
from pvae.nets import make_networks
from pvae.param_store import register_module
from pvae.priors import StandardNormalPrior, make_prior
from pvae.registry import ModelError


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _in_particle_plate() -> bool:
    return any(getattr(frame, "name", None) == PARTICLE_PLATE for frame in _PYRO_STACK)


class VAE(nn.Module):
    """Variational autoencoder: ``model`` is p(z) p(x|z), ``guide`` is q(z|x).

    Both are ordinary Pyro functions: every datapoint sits in ``pyro.plate("data", ...)``,
    the latent site is called ``"latent"`` and the observed one ``"obs"``. The prior, the
    likelihood and the guide family are modules handed in (defaults: N(0, I), Bernoulli
    logits, diagonal Gaussian), so a new one plugs in without touching this code.

    Data are ``[N, ...]`` with one row per datapoint, flat or image-shaped; the decoder's
    output is reshaped to the data's layout (``params_per_dim`` blocks along the first
    event dimension), so an MLP or a conv decoder serves flat or image data alike.

    Variants, each one keyword:

    * ``beta``, ``warmup_epochs``: the beta-VAE (Higgins et al., "beta-VAE", ICLR 2017): the
      latent site of model and guide is scaled by ``poutine.scale``, so the objective is
      E_q[log p(x|z)] - w KL(q || p) with w = ``kl_weight``, which warms up linearly from
      beta / warmup_epochs to beta over the first ``warmup_epochs`` epochs (Bowman et al.,
      CoNLL 2016; Sønderby et al., "Ladder VAE", NeurIPS 2016). Pass
      ``on_epoch_end=vae.on_epoch_end`` to :func:`pvae.fit` (or set ``completed_epochs``)
      to advance it. The weight applies only while gradients are computed (training steps):
      every evaluation (the held-out ELBO of ``fit``, :func:`pvae.estimate_elbo`,
      :func:`pvae.log_likelihood`, all gradient-free) sees the model itself, beta = 1.
      The train figure ``fit`` reports is the weighted objective. Only the ELBO objectives
      (``"elbo"``, ``"meanfield"``) honour per-site scales; the importance-weighted ones
      raise an error when w != 1.
    * ``num_classes``: the conditional VAE (Sohn, Lee & Yan, NeurIPS 2015; Kingma et al.'s
      M2 with observed labels, NeurIPS 2014): ``model(x, y)`` and ``guide(x, y)`` take
      integer labels ``y`` in 0..num_classes-1, fed one-hot to the encoder (q(z|x, y)) and
      the decoder (p(x|z, y)); the prior p(z) does not depend on y. Train with
      ``data=(x, y)``; the encoder and decoder must be built with ``cond_dim=num_classes``.

    Example::

        >>> from pvae.nets import GaussianEncoder, MLPDecoder
        >>> vae = VAE(GaussianEncoder(784, 20), MLPDecoder(20, 784))
        >>> x = torch.bernoulli(torch.full((5, 784), 0.3))
        >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module | None = None,
        likelihood: nn.Module | None = None,
        z_dim: int | None = None,
        guide_family: nn.Module | None = None,
        *,
        beta: float = 1.0,
        warmup_epochs: int = 0,
        num_classes: int = 0,
        x_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        z_dim = z_dim if z_dim is not None else getattr(encoder, "z_dim", None)
        if prior is None and z_dim is None:
            raise ValueError("pass z_dim (or an encoder with a z_dim attribute, or a prior)")
        if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(f"warmup_epochs must be an integer ≥ 0, got {warmup_epochs!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer ≥ 0, got {num_classes!r}")
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            cond_dim = getattr(net, "cond_dim", None)
            if cond_dim is not None and cond_dim != num_classes:
                raise ValueError(
                    f"the {name} takes a condition of {cond_dim} values but num_classes is "
                    f"{num_classes}: build it with cond_dim={num_classes}"
                )
        self.z_dim = z_dim
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior if prior is not None else StandardNormalPrior(z_dim)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()
        self.guide_family = guide_family if guide_family is not None else GaussianGuide(z_dim)
        context_dim = getattr(encoder, "context_dim", 0)
        if getattr(self.guide_family, "context_dim", 0) != context_dim:
            raise ValueError(
                f"the guide family needs a context of {self.guide_family.context_dim} values "
                f"but the encoder gives {context_dim}: build the encoder with "
                f"context_dim={self.guide_family.context_dim}"
            )
        self.beta, self.warmup_epochs, self.num_classes = float(beta), warmup_epochs, num_classes
        self.completed_epochs = 0
        shape = x_shape if x_shape is not None else getattr(decoder, "x_shape", None)
        self.x_shape = tuple(shape) if shape is not None else None
        # Registering parameter-free modules with Pyro would cost a loop per step for nothing.
        self._learned_prior = _has_parameters(self.prior)
        self._learned_likelihood = _has_parameters(self.likelihood)
        self._learned_guide = _has_parameters(self.guide_family)
        self._prior_uses_encoder = getattr(self.prior, "uses_encoder", False)
        # Filled by build_vae so that checkpoints can rebuild the same architecture.
        self.model_args: dict[str, Any] = {}

    # --- the Pyro model and guide -------------------------------------------------------

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        cond = self._condition(x, y)
        register_module("decoder", self.decoder)
        if self._prior_uses_encoder:  # the VampPrior pushes its pseudo-inputs through it
            register_module("encoder", self.encoder)
        if self._learned_prior:
            register_module("prior", self.prior)
        if self._learned_likelihood:
            register_module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            with self._kl_scale():
                z = pyro.sample("latent", self.prior())
            params = self._likelihood_params(z, cond, x.shape[1:])
            pyro.sample("obs", self.likelihood(params, event_dim=x.dim() - 1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        cond = self._condition(x, y)
        register_module("encoder", self.encoder)
        if self._learned_guide:
            register_module("guide", self.guide_family)
        with pyro.plate("data", x.shape[0]), self._kl_scale():
            pyro.sample("latent", self.guide_family(*self.encoder(x, *cond)))

    # --- variants -----------------------------------------------------------------------

    @property
    def kl_weight(self) -> float:
        """The weight of KL(q || p) in the training objective at this epoch (1 for a VAE)."""
        if self.warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, (self.completed_epochs + 1) / self.warmup_epochs)

    def on_epoch_end(self, stats) -> None:
        """Advance the warm-up: give it to :func:`pvae.fit` as ``on_epoch_end``."""
        self.completed_epochs = stats.epoch

    def _kl_scale(self):
        weight = self.kl_weight
        if weight == 1.0 or not torch.is_grad_enabled():
            return contextlib.nullcontext()
        if is_validation_enabled() and _in_particle_plate():
            raise ModelError(
                f"the KL weight is {weight:g} (beta or warm-up), which only the ELBO "
                "objectives honour: train with objective 'elbo' or 'meanfield', or use beta "
                "= 1 and no warm-up with the importance-weighted objectives"
            )
        return poutine.scale(scale=weight)

    def _condition(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if self.num_classes == 0:
            if y is not None:
                raise ModelError(
                    "this VAE is not conditional and takes no labels: pass data=x, or build "
                    "it with num_classes=... for a conditional VAE"
                )
            return ()
        if y is None:
            raise ModelError(
                "this conditional VAE needs labels: pass data=(x, y) with integer class labels "
                f"y in 0..{self.num_classes - 1}"
            )
        if is_validation_enabled():
            self.check_labels(y, x)
        return (functional.one_hot(y, self.num_classes).to(x.dtype),)

    def check_labels(self, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """Raise a ``ValueError`` unless ``y`` holds one class label in 0..K-1 per datapoint."""
        if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
            kind = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
            raise ModelError(
                f"labels must be an integer tensor (torch.long), got {kind}: pass y.long()"
            )
        if y.dim() != 1 or (x is not None and y.shape[0] != x.shape[0]):
            raise ModelError(f"labels must have shape [num_datapoints], got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ModelError(
                f"labels must lie in 0..{self.num_classes - 1}, got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )

    # --- helpers ------------------------------------------------------------------------

    def _likelihood_params(self, z, cond, event_shape) -> torch.Tensor:
        """Decoder output in the layout of the data: [..., p * C, *rest] for events (C, *rest)."""
        params = self.decoder(z, *cond)
        batch = z.shape[:-1]
        target = (self.likelihood.params_per_dim * event_shape[0], *event_shape[1:])
        if tuple(params.shape[len(batch) :]) != target:
            params = params.reshape(*batch, *target)
        return params

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` saying what to do if ``x`` does not fit this VAE."""
        if self.x_shape is not None and x.dim() >= 2 and x[0].numel() != math.prod(self.x_shape):
            raise ModelError(
                f"the data have {x[0].numel()} values per datapoint but this VAE was built for "
                f"{math.prod(self.x_shape)} (shape {list(self.x_shape)})"
            )
        self.likelihood.check_data(x)

    def _labels(self, y, n: int, device) -> tuple[torch.Tensor, ...]:
        """The decoder's condition for ``n`` draws: () or one-hot labels (``y`` None cycles)."""
        if self.num_classes == 0:
            if y is not None:
                raise ModelError("this VAE is not conditional and takes no labels")
            return ()
        if y is None:  # every class in turn
            y = torch.arange(n, device=device) % self.num_classes
        y = torch.as_tensor(y, device=device).long().expand(n)
        self.check_labels(y)
        return (functional.one_hot(y, self.num_classes).float(),)

    # --- pictures -----------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Location and scale of the encoder's Gaussian (q(z|x) itself for the default guide)."""
        return self.encoder(x, *self._condition(x, y))[:2]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|z) for codes ``z`` [..., z_dim] (e.g. pixel probabilities), shaped
        [..., *x_shape]; a conditional VAE decodes for labels ``y``: one label, one per code
        (shape ``z.shape[:-1]``), or None for every class in turn (see :meth:`sample`)."""
        shape = self.x_shape
        if shape is None:
            raise ValueError("the VAE does not know the data's shape: pass x_shape")
        batch = z.shape[:-1]
        codes = z.reshape(-1, z.shape[-1])
        if y is not None and torch.as_tensor(y).shape == batch:
            y = torch.as_tensor(y).reshape(-1)
        cond = self._labels(y, codes.shape[0], z.device)
        params = self._likelihood_params(codes, cond, shape)
        mean = self.likelihood.mean(params, event_dim=len(shape))
        return mean.reshape(*batch, *mean.shape[1:])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x|z) at a representative z of q(z|x) (its mean, for the Gaussian guide)."""
        cond = self._condition(x, y)
        z = self.guide_family.point(*self.encoder(x, *cond))
        params = self._likelihood_params(z, cond, x.shape[1:])
        return self.likelihood.mean(params, event_dim=x.dim() - 1)

    @torch.no_grad()
    def sample(self, num_samples: int, y=None) -> torch.Tensor:
        """Means of p(x|z) for ``num_samples`` draws of z from the prior.

        For a conditional VAE, ``y`` is the class to draw (an int, or one label per sample);
        ``None`` cycles through the classes (0, 1, ..., K-1, 0, ...).
        """
        return self.decode(self.prior().sample((num_samples,)), y)


def build_vae(
    x_dim: int,
    z_dim: int = 50,
    hidden_dims: Sequence[int] = (400,),
    activation: str = "relu",
    prior: str = "standard_normal",
    likelihood: str = "bernoulli",
    *,
    guide: str = "gaussian",
    network: str = "mlp",
    image_shape: Sequence[int] | None = None,
    channels: Sequence[int] = (32, 64),
    prior_options: Mapping[str, Any] | None = None,
    likelihood_options: Mapping[str, Any] | None = None,
    guide_options: Mapping[str, Any] | None = None,
    beta: float = 1.0,
    warmup_epochs: int = 0,
    num_classes: int = 0,
    adversarial: bool = False,
    adversarial_weight: float = 1.0,
    discriminator_dims: Sequence[int] = (256, 256),
) -> VAE:
    """A VAE chosen by names and sizes; the arguments are kept (``model_args``) for checkpoints.

    Every argument is a number, a string, a list or a dict of those, so a YAML file can hold
    them. Names: ``prior`` in ``pvae.priors.PRIORS``, ``likelihood`` in
    ``pvae.likelihoods.LIKELIHOODS``, ``guide`` in ``pvae.guides.GUIDES``, ``network`` in
    ``pvae.nets.NETWORKS`` (``"conv"`` needs ``image_shape``, e.g. ``[1, 28, 28]``); the
    ``*_options`` dicts are keyword arguments of the chosen class (e.g.
    ``prior_options={"num_components": 20}``). ``beta``, ``warmup_epochs`` and
    ``num_classes`` select the variants described in :class:`VAE`; ``adversarial=True``
    builds a :class:`pvae.variants.AdversarialAutoencoder` instead (not an ELBO model), with
    ``adversarial_weight`` and a discriminator of ``discriminator_dims``. The data stay flat
    ``[N, x_dim]``, whatever the network.

    Example::

        >>> vae = build_vae(784, z_dim=20, hidden_dims=[400])
        >>> vae.model_args["z_dim"]
        20
        >>> conv = build_vae(784, 8, network="conv", image_shape=[1, 28, 28], prior="vamp")
    """
    model_args = dict(
        x_dim=x_dim,
        z_dim=z_dim,
        hidden_dims=list(hidden_dims),
        activation=activation,
        prior=prior,
        likelihood=likelihood,
        guide=guide,
        network=network,
        image_shape=list(image_shape) if image_shape is not None else None,
        channels=list(channels),
        prior_options=dict(prior_options or {}),
        likelihood_options=dict(likelihood_options or {}),
        guide_options=dict(guide_options or {}),
        beta=beta,
        warmup_epochs=warmup_epochs,
        num_classes=num_classes,
    )
    if adversarial:
        model_args.update(
            adversarial=True,
            adversarial_weight=adversarial_weight,
            discriminator_dims=list(discriminator_dims),
        )
        _check_adversarial(model_args)
    likelihood_module = make_likelihood(likelihood, **model_args["likelihood_options"])
    guide_module = make_guide(guide, z_dim, **model_args["guide_options"])
    encoder, decoder = make_networks(
        network,
        x_dim,
        z_dim,
        image_shape=image_shape,
        hidden_dims=hidden_dims,
        activation=activation,
        channels=channels,
        params_per_dim=likelihood_module.params_per_dim,
        context_dim=guide_module.context_dim,
        cond_dim=num_classes,
    )
    prior_module = make_prior(prior, z_dim, encoder, x_dim, **model_args["prior_options"])
    if adversarial:
        from pvae.variants import AdversarialAutoencoder

        aae = AdversarialAutoencoder(
            encoder,
            decoder,
            prior_module,
            likelihood_module,
            discriminator_dims=discriminator_dims,
            adversarial_weight=adversarial_weight,
            x_shape=(x_dim,),
        )
        aae.model_args = model_args
        return aae
    vae = VAE(
        encoder,
        decoder,
        prior=prior_module,
        likelihood=likelihood_module,
        guide_family=guide_module,
        beta=beta,
        warmup_epochs=warmup_epochs,
        num_classes=num_classes,
        x_shape=(x_dim,),
    )
    vae.model_args = model_args
    return vae


def _check_adversarial(model_args: dict[str, Any]) -> None:
    """The adversarial autoencoder has a deterministic encoder, no KL term and no labels."""
    conflicts = {
        "guide": (model_args["guide"] != "gaussian", "its encoder is deterministic"),
        "beta": (model_args["beta"] != 1 or model_args["warmup_epochs"] > 0, "it has no KL term"),
        "num_classes": (model_args["num_classes"] > 0, "it is unconditional"),
    }
    for key, (conflict, reason) in conflicts.items():
        if conflict:
            raise ValueError(
                f"the adversarial autoencoder takes no {key} setting ({reason}): drop it, or "
                "drop adversarial"
            )
