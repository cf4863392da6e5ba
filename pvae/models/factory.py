"""VAEs by name, and back from checkpoints: what a checkpoint's ``model_args`` rebuild."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pvae.infer.checkpoint import load_checkpoint
from pvae.models.custom_parts import import_custom_parts
from pvae.models.guides import make_guide
from pvae.models.hierarchical import build_hierarchical_vae
from pvae.models.likelihoods import make_likelihood
from pvae.models.nets import make_networks
from pvae.models.priors import make_prior
from pvae.models.settings import ModelConfig
from pvae.models.vae import VAE
from pvae.models.variants import AdversarialAutoencoder


def build_vae(
    x_dim: int,
    z_dim: int = 20,
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
    hierarchy: Sequence[int] | None = None,
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
    ``adversarial_weight`` and a discriminator of ``discriminator_dims``. ``hierarchy``
    (latent sizes, z1 first, the last equal to ``z_dim``) builds a
    :class:`pvae.models.hierarchical.HierarchicalVAE` with that many stochastic layers. The
    data stay flat ``[N, x_dim]``, whatever the network.

    Example::

        >>> vae = build_vae(784, z_dim=20, hidden_dims=[400])
        >>> vae.model_args["z_dim"]
        20
        >>> conv = build_vae(784, 8, network="conv", image_shape=[1, 28, 28], prior="vamp")
        >>> two_layers = build_vae(784, 50, [200, 200], "tanh", hierarchy=[100, 50])
    """
    config = ModelConfig(
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
        adversarial=adversarial,
        adversarial_weight=adversarial_weight,
        discriminator_dims=list(discriminator_dims),
        hierarchy=list(hierarchy) if hierarchy is not None else None,
    ).check()
    vae = _build(config)
    vae.model_args = config.to_dict()
    return vae


def _build(config: ModelConfig) -> VAE:
    if config.hierarchy is not None:
        return build_hierarchical_vae(config.to_dict())
    likelihood = make_likelihood(config.likelihood, config.x_dim, **config.likelihood_options)
    guide = make_guide(config.guide, config.z_dim, **config.guide_options)
    encoder, decoder = make_networks(
        config.network,
        config.x_dim,
        config.z_dim,
        image_shape=config.image_shape,
        hidden_dims=config.hidden_dims,
        activation=config.activation,
        channels=config.channels,
        params_per_dim=likelihood.params_per_dim,
        context_dim=guide.context_dim,
        cond_dim=config.num_classes,
    )
    prior = make_prior(config.prior, config.z_dim, encoder, config.x_dim, **config.prior_options)
    if config.adversarial:
        return AdversarialAutoencoder(
            encoder,
            decoder,
            prior,
            likelihood,
            discriminator_dims=config.discriminator_dims,
            adversarial_weight=config.adversarial_weight,
            x_shape=(config.x_dim,),
        )
    return VAE(
        encoder,
        decoder,
        prior=prior,
        likelihood=likelihood,
        guide_family=guide,
        beta=config.beta,
        warmup_epochs=config.warmup_epochs,
        num_classes=config.num_classes,
        x_shape=(config.x_dim,),
    )


def vae_state(vae: VAE, **extra: Any) -> dict[str, Any]:
    """The checkpoint dictionary of a VAE made by :func:`pvae.build_vae`, plus ``extra`` entries.

    Parts a user registered (a likelihood class of their own, ...) are named with the module
    that defines them (``custom_parts``), which :func:`load_vae` imports.
    """
    return {**vae.checkpoint_state(), **extra}


def load(path: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The VAE saved in a checkpoint (by :meth:`pvae.VAE.save` or :func:`pvae.fit`).

    Example::

        >>> vae = pvae.load("runs/mnist_svi/best.pt")  # doctest: +SKIP
    """
    return load_vae(path, device)[0]


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE saved in a checkpoint; returns it with the whole checkpoint dictionary.

    A part registered by a user is imported from the module the checkpoint names (see
    :mod:`pvae.models.custom_parts`), which must be importable here.

    Example::

        >>> vae, state = load_vae("runs/mnist/checkpoint.pt")  # doctest: +SKIP
    """
    state = load_checkpoint(path)
    if not state.get("model_args"):
        raise ValueError(
            f"{path} holds no VAE architecture (model_args): it is a checkpoint of a model "
            "that pvae.build_vae did not make (a hand-written model/guide, say). Rebuild the "
            "model in code and take its parameters from pvae.load_checkpoint(path)['params'], "
            "or resume it with pvae.fit(..., resume=path)"
        )
    import_custom_parts(state.get("custom_parts", {}), str(path))
    vae = build_vae(**state["model_args"])
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not match the architecture it declares: {str(error).splitlines()[0]}"
        ) from error
    return vae.to(device), state
