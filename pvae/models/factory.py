"""VAEs by name, and back from checkpoints: what a checkpoint's ``model_args`` rebuild."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pvae.infer.checkpoint import load_checkpoint, package_version
from pvae.models.guides import make_guide
from pvae.models.hierarchical import build_hierarchical_vae
from pvae.models.likelihoods import make_likelihood
from pvae.models.nets import make_networks
from pvae.models.priors import make_prior
from pvae.models.vae import VAE


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
    if hierarchy is not None:  # only then a key, so that older checkpoints' model_args match
        return build_hierarchical_vae({**model_args, "hierarchy": hierarchy})
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
        from pvae.models.variants import AdversarialAutoencoder

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


def vae_state(vae: VAE, **extra: Any) -> dict[str, Any]:
    """The checkpoint dictionary of a VAE made by :func:`pvae.build_vae`, plus ``extra`` entries."""
    return {
        "pvae_version": package_version(),
        "model_args": vae.model_args,
        "model": vae.state_dict(),
        **extra,
    }


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE saved in a checkpoint; returns it with the whole checkpoint dictionary.

    Example::

        >>> vae, state = load_vae("runs/mnist/checkpoint.pt")  # doctest: +SKIP
    """
    state = load_checkpoint(path)
    if not state.get("model_args"):
        raise ValueError(f"{path} holds no VAE architecture (model_args): cannot rebuild it")
    vae = build_vae(**state["model_args"])
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not match the architecture it declares: {str(error).splitlines()[0]}"
        ) from error
    return vae.to(device), state
