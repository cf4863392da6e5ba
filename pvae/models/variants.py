"""The adversarial autoencoder: a deterministic autoencoder whose codes are matched to a prior
by a discriminator. Not an ELBO model (the beta-VAE and the conditional VAE are options of
:class:`pvae.VAE`; this one is a different objective).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.poutine.util import is_validation_enabled
from torch.func import functional_call
from torch.nn import functional

from pvae.infer.param_store import register_module
from pvae.infer.plates import in_particle_plate
from pvae.models.nets import MLP
from pvae.models.registry import ModelError
from pvae.models.vae import VAE


class _FlatDensity(dist.ImproperUniform):
    """The improper density 1 (log-density 0), with its zeros on the value's device."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch_shape = value.shape[: value.dim() - self.event_dim]
        return value.new_zeros(()).expand(torch.broadcast_shapes(batch_shape, self.batch_shape))


class AdversarialAutoencoder(VAE):
    """Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial
    Autoencoders", ICLR workshop 2016), as a Pyro model/guide pair that :func:`pvae.fit` trains.

    The encoder is deterministic, z = f(x) (the guide samples a ``Delta`` at the encoder's
    location), and the decoder reconstructs x from z. A discriminator D(z) (an MLP giving a
    logit) learns to tell prior draws z ~ p(z) from codes f(x); the encoder learns to fool it,
    which pulls the aggregate posterior, the distribution of f(x) over the data, towards
    p(z). One training step minimizes, per datapoint,

        -log p(x | f(x)) + w [BCE(D(z_p), 1) + BCE(D(f(x)), 0)]  (discriminator's terms)
                         + w BCE(D(f(x)), 1)                       (encoder's term)

    where the discriminator's terms reach only D's parameters (f(x) detached) and the
    encoder's term only the encoder (D's parameters detached): the usual alternating
    updates, made simultaneous so that one optimizer serves both, with the non-saturating
    generator loss of Goodfellow et al. (2014). ``w`` is ``adversarial_weight``. In the
    model, z sits on an improper flat density (log-density 0) and the adversarial terms are a
    ``pyro.factor`` in the ``"data"`` plate, so that Pyro's ``Trace_ELBO`` computes exactly
    the loss above (train with ``objective="elbo"``).

    **This is not an ELBO model and has no bound on log p(x).** The figure ``fit`` reports
    for training is minus the loss above; every evaluation (run without gradients: the
    held-out figure of ``fit``, :func:`pvae.estimate_elbo`, :func:`pvae.log_likelihood`)
    drops the adversarial terms and gives the reconstruction log-likelihood
    log p(x | f(x)), which is not a bound on log p(x). The prior is a target, not learned:
    its parameters, if any, get no gradient.

    Example::

        >>> aae = pvae.build_vae(784, z_dim=8, adversarial=True)  # doctest: +SKIP
        >>> pvae.fit(aae.model, aae.guide, x)  # doctest: +SKIP
    """

    def __init__(
        self,
        *args,
        discriminator_dims: Sequence[int] = (256, 256),
        adversarial_weight: float = 1.0,
        **kwargs,
    ):
        # The encoder, decoder, prior, likelihood, z_dim and x_shape of VAE; no guide family
        # (the encoder is deterministic) and none of its variants.
        super().__init__(*args, **kwargs)
        if getattr(self.encoder, "context_dim", 0):
            raise ValueError("the adversarial autoencoder's encoder gives no flow context")
        if not adversarial_weight > 0:
            raise ValueError(f"adversarial_weight must be > 0, got {adversarial_weight}")
        self.adversarial_weight = float(adversarial_weight)
        self.discriminator = MLP(self.z_dim, list(discriminator_dims), 1, "relu")

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._condition(x, y)  # no labels: an unconditional model
        register_module("decoder", self.decoder)
        register_module("discriminator", self.discriminator)
        flat = _FlatDensity(constraints.real_vector, (), (self.z_dim,))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", flat)
            params = self._likelihood_params(z, (), x.shape[1:])
            pyro.sample("obs", self.likelihood(params, event_dim=x.dim() - 1), obs=x)
            if torch.is_grad_enabled():  # training: the adversarial terms
                if is_validation_enabled() and in_particle_plate():
                    raise ModelError(
                        "train the adversarial autoencoder with objective 'elbo': it is not an "
                        "ELBO model, and importance weights of its loss mean nothing"
                    )
                # pyro.factor, without its per-call argument validation.
                log_factor = -self.adversarial_weight * self._adversarial_loss(z)
                factor = dist.Unit(log_factor, validate_args=False)
                pyro.sample(
                    "adversarial", factor, obs=factor.sample(), infer={"is_auxiliary": True}
                )

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._condition(x, y)
        register_module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", dist.Delta(self.encoder(x)[0], event_dim=1))

    def _adversarial_loss(self, codes: torch.Tensor) -> torch.Tensor:
        """Per datapoint: the discriminator's loss on a prior draw and on the code (reaching D
        only) plus the encoder's loss on the code (reaching the encoder only)."""
        with torch.no_grad():
            prior_draws = self.prior().sample(codes.shape[:-1])
        discriminator = self.discriminator
        frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
        real = discriminator(prior_draws).squeeze(-1)
        fake = discriminator(codes.detach()).squeeze(-1)
        fooled = functional_call(discriminator, frozen, (codes,)).squeeze(-1)
        ones, zeros = torch.ones_like(real), torch.zeros_like(real)

        def bce(logits, target):
            return functional.binary_cross_entropy_with_logits(logits, target, reduction="none")

        return bce(real, ones) + bce(fake, zeros) + bce(fooled, ones)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | f(x))."""
        with torch.no_grad():
            params = self._likelihood_params(self.encoder(x)[0], (), x.shape[1:])
            return self.likelihood.mean(params, event_dim=x.dim() - 1)
