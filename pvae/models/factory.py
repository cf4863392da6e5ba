"""VAEs by name, and back from checkpoints: what a checkpoint's ``model_args`` rebuild."""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pvae.infer.checkpoint import load_checkpoint
from pvae.infer.checkpoint_entries import check_entries, check_finite, shown
from pvae.models.custom_parts import CustomParts, check_custom_parts
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

    Parts a user registered (a likelihood class of their own, ...) are recorded by name and
    class (``custom_parts``), which :func:`load_vae` checks against what is registered where
    it loads.
    """
    return {**vae.checkpoint_state(), **extra}


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    custom_parts: CustomParts | None = None,
) -> VAE:
    """The VAE saved in a checkpoint (by :meth:`pvae.VAE.save` or :func:`pvae.fit`).

    ``custom_parts``: the user's classes the checkpoint names (see :func:`load_vae`).

    Example::

        >>> vae = pvae.load("runs/mnist_svi/best.pt")  # doctest: +SKIP
        >>> vae = pvae.load("runs/mine/best.pt", custom_parts=[MyLikelihood])  # doctest: +SKIP
    """
    return load_vae(path, device, custom_parts)[0]


def load_vae(
    path: str | Path,
    device: str | torch.device = "cpu",
    custom_parts: CustomParts | None = None,
) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE saved in a checkpoint; returns it with the whole checkpoint dictionary.

    The checkpoint names its parts; each must be registered in this process: pvae's own,
    one the user's code registered (``LIKELIHOODS["mine"] = MyLikelihood``), or one of
    ``custom_parts`` (classes, or a mapping of names to classes), registered here under the
    checkpoint's names. Nothing a file names is imported (see
    :mod:`pvae.models.custom_parts`); a damaged file is one ``ValueError`` naming it.

    Example::

        >>> vae, state = load_vae("runs/mnist/checkpoint.pt")  # doctest: +SKIP
        >>> vae, state = load_vae("runs/mine.pt", custom_parts=[MyLikelihood])  # doctest: +SKIP
    """
    state = load_checkpoint(path)
    model_args = checked_model_args(state, path, custom_parts)
    check_entries(state, str(path), {"model": dict[str, torch.Tensor]})
    check_finite(state["model"], f"{path}'s model")
    try:
        vae = build_vae(**model_args)
    except (ValueError, RuntimeError) as error:  # RuntimeError: sizes too large to allocate
        raise ValueError(f"{path}: cannot build the VAE of its model_args: {error}") from None
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not match the architecture it declares: {_first_mismatch(error)}"
        ) from error
    return vae.to(device), state


def checked_model_args(
    state: dict[str, Any], path: str | Path, custom_parts: CustomParts | None = None
) -> dict[str, Any]:
    """A checkpoint's ``model_args``, each of the type :func:`build_vae` takes, whose parts
    are registered here (with ``custom_parts``; see :func:`load_vae`): else one ``ValueError``
    naming ``path``.

    Example::

        >>> checked_model_args({"model_args": {"x_dim": 4, "prior": "mog"}}, "c.pt")
        {'x_dim': 4, 'prior': 'mog'}
    """
    model_args = state.get("model_args")
    if model_args is None or (isinstance(model_args, Mapping) and not model_args):
        raise ValueError(
            f"{path} holds no VAE architecture (model_args): it is a checkpoint of a model "
            "that pvae.build_vae did not make (a hand-written model/guide, say). Rebuild the "
            "model in code and take its parameters from pvae.load_checkpoint(path)['params'], "
            "or resume it with pvae.fit(..., resume=path); then score it with "
            "pvae.log_likelihood, pvae.ais or pvae.diagnose"
        )
    types = typing.get_type_hints(ModelConfig)
    check_entries(model_args, f"{path}'s model_args", {"x_dim": int}, types)
    unknown = [key for key in model_args if key not in types]
    if unknown:
        key = repr(unknown[0]) if isinstance(unknown[0], str) else shown(unknown[0])
        raise ValueError(
            f"{path}'s model_args hold {key}, which this pvae's build_vae does not "
            "take: the file is damaged, or was written by a newer pvae (upgrade pvae)"
        )
    check_custom_parts(model_args, state.get("custom_parts"), str(path), custom_parts)
    return model_args


def _first_mismatch(error: RuntimeError) -> str:
    """The first line of torch's ``load_state_dict`` error that names a tensor (its first
    line only says that there are errors)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else "its weights differ"
