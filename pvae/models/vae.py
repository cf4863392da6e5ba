"""The VAE as a Pyro model/guide pair around an encoder and a decoder network."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import is_validation_enabled
from torch import nn
from torch.nn import functional

from pvae.infer.checkpoint import package_version, save_checkpoint
from pvae.infer.evaluation_mode import in_evaluation
from pvae.infer.param_store import register_module
from pvae.infer.plates import in_particle_plate
from pvae.models.custom_parts import record_custom_parts
from pvae.models.guides import GaussianGuide
from pvae.models.kl_warmup import KLWarmup
from pvae.models.likelihoods import BernoulliLikelihood
from pvae.models.priors import StandardNormalPrior
from pvae.models.registry import ModelError


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


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
      CoNLL 2016; Sønderby et al., "Ladder VAE", NeurIPS 2016), a schedule
      (:class:`pvae.models.kl_warmup.KLWarmup`) that ``fit`` drives and checkpoints when
      given ``epoch_schedules=[vae.kl_warmup]``; training a warm-up that nothing advances
      is refused. The weight applies only to training steps: every evaluation (the
      held-out bounds of ``fit``, :func:`pvae.estimate_elbo`, :func:`pvae.log_likelihood`,
      :func:`pvae.ais`, :func:`pvae.bdmc`) sees the model itself, beta = 1.
      The train figure ``fit`` reports is the weighted objective. Only the ELBO objectives
      (``"elbo"``, ``"meanfield"``) honour per-site scales; the importance-weighted ones
      raise an error when w != 1.
    * ``num_classes``: the conditional VAE (Sohn, Lee & Yan, NeurIPS 2015; Kingma et al.'s
      M2 with observed labels, NeurIPS 2014): ``model(x, y)`` and ``guide(x, y)`` take
      integer labels ``y`` in 0..num_classes-1, fed one-hot to the encoder (q(z|x, y)) and
      the decoder (p(x|z, y)); the prior p(z) does not depend on y. Train with
      ``data=(x, y)``; the encoder and decoder must be built with ``cond_dim=num_classes``.

    Example::

        >>> from pvae.models.nets import GaussianEncoder, MLPDecoder
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
        self.kl_warmup = KLWarmup(beta, warmup_epochs)
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
            with self._kl_scale(x.device):
                z = pyro.sample("latent", self.prior())
            params = self._likelihood_params(z, cond, x.shape[1:])
            pyro.sample("obs", self.likelihood(params, event_dim=x.dim() - 1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        cond = self._condition(x, y)
        register_module("encoder", self.encoder)
        if self._learned_guide:
            register_module("guide", self.guide_family)
        with pyro.plate("data", x.shape[0]), self._kl_scale(x.device):
            pyro.sample("latent", self.guide_family(*self.encoder(x, *cond)))

    # --- variants -----------------------------------------------------------------------

    @property
    def kl_weight(self) -> float:
        """The weight of KL(q || p) in the training objective at this epoch (1 for a VAE)."""
        return self.kl_warmup.weight

    @property
    def completed_epochs(self) -> int:
        """Where the KL warm-up stands (set by :func:`pvae.fit` through ``kl_warmup``)."""
        return self.kl_warmup.completed_epochs or 0

    @completed_epochs.setter
    def completed_epochs(self, epochs: int) -> None:
        self.kl_warmup.set_epoch(epochs)

    def _kl_scale(self, device: torch.device):
        # Bounds on log p(x) are bounds on the model itself, beta = 1: gradient-free
        # estimators, and AIS/BDMC, which take gradients of the latents only.
        if not torch.is_grad_enabled() or in_evaluation():
            return contextlib.nullcontext()
        self.kl_warmup.check_driven()
        weight = self.kl_weight
        if weight == 1.0 and not self.kl_warmup.warmup_epochs:
            return contextlib.nullcontext()
        if is_validation_enabled() and in_particle_plate():
            raise ModelError(
                f"the KL weight is {weight:g} (beta or warm-up), which only the ELBO "
                "objectives honour: train with objective 'elbo' or 'meanfield', or use beta "
                "= 1 and no warm-up with the importance-weighted objectives"
            )
        # A tensor, updated in place by the warm-up: a captured step reads it as an input.
        return poutine.scale(scale=self.kl_warmup.weight_tensor(device))

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

    @torch.no_grad()
    def elbo_terms(
        self, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 1000
    ) -> tuple[float, float]:
        """The ELBO's two terms, mean per datapoint (nats, one draw z ~ q(z|x) each): the
        reconstruction E_q[log p(x|z)] and KL(q(z|x) || p(z)) as log q(z|x) - log p(z), so
        that the ELBO is their difference.

        Example::

            >>> vae = pvae.build_vae(4, z_dim=2, hidden_dims=[8])  # doctest: +SKIP
            >>> reconstruction, kl = vae.elbo_terms(torch.ones(3, 4))  # doctest: +SKIP
        """
        sums = torch.zeros(2, dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], batch_size):
            rows = (x[start : start + batch_size],)
            rows += (y[start : start + batch_size],) if y is not None else ()
            guide = poutine.trace(self.guide).get_trace(*rows)
            model = poutine.trace(poutine.replay(self.model, trace=guide)).get_trace(*rows)
            observed = model.nodes["obs"]["fn"].log_prob(model.nodes["obs"]["value"])
            latent = model.nodes["latent"]
            log_q = guide.nodes["latent"]["fn"].log_prob(latent["value"])
            sums[0] += observed.sum()
            sums[1] += (log_q - latent["fn"].log_prob(latent["value"])).sum()
        reconstruction, kl = (sums / x.shape[0]).tolist()
        return reconstruction, kl

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
        ``[..., *x_shape]``; a conditional VAE decodes for labels ``y``: one label, one per code
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
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild this VAE: the settings :func:`pvae.build_vae`
        made it with and its weights (empty for a VAE assembled by hand). :func:`pvae.fit`
        adds it to the checkpoints of this VAE's model."""
        if not self.model_args:
            return {}
        custom = record_custom_parts(self.model_args)
        return {
            "pvae_version": package_version(),
            "model_args": self.model_args,
            **({"custom_parts": custom} if custom else {}),
            "model": self.state_dict(),
        }

    def save(self, path) -> Path:
        """Write this VAE to ``path`` (a checkpoint :func:`pvae.load` rebuilds it from).

        Example::

            >>> pvae.load(vae.save("vae.pt")).z_dim == vae.z_dim  # doctest: +SKIP
            True
        """
        if not self.model_args:
            raise ValueError(
                "this VAE was assembled from modules by hand, so no checkpoint can rebuild it: "
                "build it with pvae.build_vae to save it, or keep torch.save(vae.state_dict())"
            )
        return save_checkpoint(path, self.checkpoint_state())

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
