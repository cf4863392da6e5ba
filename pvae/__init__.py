"""pvae: variational autoencoders as Pyro model/guide pairs.

The model p(z) p(x|z) and the guide q(z|x) are ordinary Pyro functions around neural
networks; :func:`fit` trains any such pair by SVI, on CUDA or the CPU.

Example::

    import pvae

    data = pvae.data.load_mnist()
    vae = pvae.build_vae(x_dim=784, z_dim=50)
    result = pvae.fit(vae.model, vae.guide, data.train_x, num_epochs=10,
                      transform=pvae.data.DynamicBinarization())
"""

from pvae import (
    anomaly,
    batches,
    config,
    data,
    guides,
    imputation,
    latent,
    likelihoods,
    nets,
    objectives,
    plots,
    precision,
    priors,
    variants,
)
from pvae.checkpoint import load_checkpoint, load_vae, save_checkpoint, vae_state
from pvae.config import Config, load_config, save_config
from pvae.device import resolve_device
from pvae.evaluate import estimate_elbo
from pvae.iwae import LogLikelihood, log_likelihood, plot_khat
from pvae.models import VAE, build_vae
from pvae.train import EpochStats, FitResult, TrainingDiverged, TrainingInterrupted, fit

__version__ = "0.1.0"

__all__ = [
    "anomaly",
    "batches",
    "imputation",
    "latent",
    "VAE",
    "EpochStats",
    "FitResult",
    "build_vae",
    "config",
    "Config",
    "guides",
    "load_config",
    "save_config",
    "variants",
    "data",
    "estimate_elbo",
    "fit",
    "likelihoods",
    "log_likelihood",
    "LogLikelihood",
    "plot_khat",
    "load_checkpoint",
    "load_vae",
    "nets",
    "objectives",
    "plots",
    "precision",
    "priors",
    "resolve_device",
    "save_checkpoint",
    "TrainingDiverged",
    "TrainingInterrupted",
    "vae_state",
]
