"""A VAE's settings, written once: what :func:`pvae.build_vae` takes and checkpoints store.

:class:`Architecture` holds the choices a user makes (sizes, names, options, variants);
:class:`ModelConfig` adds what the data decide (``x_dim``, ``image_shape``, ``num_classes``).
Every rule about these settings lives in their ``check`` methods, which both
:func:`pvae.build_vae` and the run configuration (:class:`pvae.Config`, which extends
:class:`Architecture`) call, so a rule and a default exist in one place.

Example::

    >>> ModelConfig(x_dim=784, z_dim=8).check().z_dim
    8
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from pvae.models.guides import GUIDES
from pvae.models.hierarchical import check_hierarchy
from pvae.models.likelihoods import LIKELIHOODS
from pvae.models.nets import ACTIVATIONS, NETWORKS
from pvae.models.priors import PRIORS
from pvae.models.registry import options_of

_REGISTRIES = {"prior": PRIORS, "likelihood": LIKELIHOODS, "guide": GUIDES}
# Options every prior/likelihood/guide receives from the VAE itself, not from the user.
_GIVEN = {"z_dim", "encoder", "x_dim"}


@dataclasses.dataclass(kw_only=True)
class Architecture:
    """The choices that make a VAE, apart from what the data decide (defaults: 784-400-20).

    ``z_dim``, ``hidden_dims`` (fully connected widths), ``activation``, ``network``
    (``mlp``/``conv``), ``channels`` (conv), ``prior``, ``likelihood``, ``guide`` (names)
    with their ``*_options`` (keyword arguments of the chosen class), ``beta`` and
    ``warmup_epochs`` (beta-VAE), ``adversarial`` with ``adversarial_weight`` and
    ``discriminator_dims`` (an adversarial autoencoder, not an ELBO model), ``hierarchy``
    (latent sizes z1 first, the last equal to ``z_dim``: a VAE with that many stochastic
    layers, see :mod:`pvae.models.hierarchical`).
    """

    z_dim: int = 20
    hidden_dims: list[int] = dataclasses.field(default_factory=lambda: [400])
    activation: str = "relu"
    network: str = "mlp"
    channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64])
    prior: str = "standard_normal"
    prior_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    likelihood: str = "bernoulli"
    likelihood_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    guide: str = "gaussian"
    guide_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    beta: float = 1.0
    warmup_epochs: int = 0
    adversarial: bool = False
    adversarial_weight: float = 1.0
    discriminator_dims: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    hierarchy: list[int] | None = None

    def check_architecture(self, conditional: bool) -> None:
        """Raise a one-line ``ValueError`` naming the setting that is wrong."""
        names = {"activation": ACTIVATIONS, "network": NETWORKS, **_REGISTRIES}
        for key, valid in names.items():
            if getattr(self, key) not in valid:
                raise ValueError(
                    f"config key {key!r}: unknown {key} {getattr(self, key)!r}: choose one of "
                    f"{', '.join(valid)}"
                )
        for key, registry in _REGISTRIES.items():
            offered = [o for o in options_of(registry[getattr(self, key)]) if o not in _GIVEN]
            for option in getattr(self, f"{key}_options"):
                if option not in offered:
                    raise ValueError(
                        f"config key '{key}_options': {key} {getattr(self, key)!r} has no "
                        f"option {option!r} (its options: {', '.join(offered) or 'none'})"
                    )
        if self.z_dim < 1:
            raise ValueError(f"z_dim must be a positive integer, got {self.z_dim}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer ≥ 0, got {self.warmup_epochs}")
        for key in ("hidden_dims", "channels", "discriminator_dims"):
            if any(width < 1 for width in getattr(self, key)):
                raise ValueError(f"{key} must be positive widths, got {getattr(self, key)}")
        for key in ("beta", "adversarial_weight"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{key} must be a positive number, got {value}")
        self._check_variants(conditional)
        if self.hierarchy is not None:
            check_hierarchy({**dataclasses.asdict(self), "num_classes": int(conditional)})

    def _check_variants(self, conditional: bool) -> None:
        """Variants that are fine alone but contradict each other."""
        if self.adversarial:
            conflicts = {
                "guide": (self.guide != "gaussian", "its encoder is deterministic"),
                "beta": (self.beta != 1 or self.warmup_epochs > 0, "it has no KL term"),
                "conditional": (conditional, "it is unconditional"),
            }
            for key, (conflict, reason) in conflicts.items():
                if conflict:
                    raise ValueError(
                        f"the adversarial autoencoder takes no {key} setting ({reason}): drop "
                        "it, or drop adversarial"
                    )
        if conditional and self.prior == "vamp":
            raise ValueError(
                "prior 'vamp' pushes pseudo-inputs through the encoder, which a conditional "
                "VAE's encoder cannot take without a label: use another prior or an "
                "unconditional VAE"
            )


@dataclasses.dataclass(kw_only=True)
class ModelConfig(Architecture):
    """Exactly the arguments of :func:`pvae.build_vae`; its ``to_dict()`` is a checkpoint's
    ``model_args``.

    Example::

        >>> ModelConfig.from_dict({"x_dim": 4}).hidden_dims
        [400]
    """

    x_dim: int
    image_shape: list[int] | None = None
    num_classes: int = 0

    def check(self) -> ModelConfig:
        """Every rule of :class:`Architecture`, and the data's sizes; returns ``self``."""
        if self.x_dim < 1:
            raise ValueError(f"x_dim must be a positive integer, got {self.x_dim}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be ≥ 0, got {self.num_classes}")
        if "x_dim" in self.likelihood_options:
            raise ValueError(
                "likelihood_options hold x_dim: the likelihood is given build_vae's x_dim "
                f"({self.x_dim}); drop it from the options"
            )
        self.check_architecture(conditional=self.num_classes > 0)
        return self

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """From a checkpoint's ``model_args`` (older ones lack keys that have defaults)."""
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), every key present."""
        return dataclasses.asdict(self)


ARCHITECTURE_KEYS = tuple(field.name for field in dataclasses.fields(Architecture))
