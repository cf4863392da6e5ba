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

import sys

from pvae import config, data
from pvae.analysis import anomaly, imputation, latent
from pvae.config import Config, load_config, save_config
from pvae.errors import ModelError, TrainingDiverged, TrainingInterrupted
from pvae.infer import batches, objectives, precision
from pvae.infer.ais import AnnealedLogLikelihood, BidirectionalBounds, ais, bdmc
from pvae.infer.checkpoint import load_checkpoint, package_version, save_checkpoint
from pvae.infer.device import resolve_device
from pvae.infer.evaluate import estimate_elbo
from pvae.infer.iwae import LogLikelihood, log_likelihood
from pvae.infer.train import EpochStats, FitResult, fit
from pvae.models import guides, likelihoods, nets, priors, variants
from pvae.models.factory import build_vae, load, load_vae, vae_state
from pvae.models.vae import VAE
from pvae.viz import plots
from pvae.viz.plots import plot_khat

__version__ = package_version()

# The public modules keep their import paths from before the layers (import pvae.nets,
# from pvae.likelihoods import ...): each is registered under its short name too.
for _module in (
    anomaly, batches, guides, imputation, latent, likelihoods, nets, objectives, plots,
    precision, priors, variants,
):  # fmt: skip
    sys.modules[f"pvae.{_module.__name__.rsplit('.', 1)[-1]}"] = _module
del _module

__all__ = [
    "ais",
    "AnnealedLogLikelihood",
    "anomaly",
    "bdmc",
    "BidirectionalBounds",
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
    "ModelError",
    "data",
    "estimate_elbo",
    "fit",
    "likelihoods",
    "log_likelihood",
    "LogLikelihood",
    "plot_khat",
    "load",
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
