"""pvae: variational autoencoders as Pyro model/guide pairs.

The model p(z) p(x|z) and the guide q(z|x) are ordinary Pyro functions around neural
networks; :func:`fit` trains any such pair by SVI, on CUDA or the CPU.

Example::

    import pvae

    data = pvae.data.load_mnist()
    vae = pvae.build_vae(x_dim=784, z_dim=50)
    result = pvae.fit(vae.model, vae.guide, data.train_x, num_epochs=10,
                      transform=pvae.data.DynamicBinarization())

Glossary (one name per concept, in arguments, config keys and messages):

- *datapoint*, *data plate*: one row of the data; the model's and guide's per-datapoint sites
  sit in ``pyro.plate("data", ...)``, which fit scales to the whole dataset.
- ``num_particles``: draws per datapoint in one training step (Pyro's name): the K of the
  objectives ``"iwae"`` and ``"dreg"``, averaged over for ``"elbo"``.
- ``num_samples``: K, the importance samples per datapoint of a bound that *evaluates*
  (:func:`pvae.log_likelihood`, ``pvae evaluate -k``, a run's final held-out IWAE);
  ``held_out_num_samples``: fit's K of the held-out bound that early stopping watches. Their
  old names, ``iwae_samples`` and ``held_out_samples``, work until pvae 0.3 with a
  ``DeprecationWarning``.
- *bound*: a lower bound on log p(x) per datapoint, in nats: the ELBO (K = 1) or IWAE_K.
- *held out*: data scored, never trained on (fit's ``held_out``, the example's test digits).
- ``num_chains``, ``num_steps``: AIS/BDMC's chains per datapoint and annealing steps.
- ``transform``: fit's function applied to each minibatch (binarization, 8-bit scaling).
- *checkpoint*: a file of tensors and plain data (``pvae.load_checkpoint``); ``best.pt``:
  the checkpoint of the epoch with the best held-out bound.
- *patience*: epochs without a better held-out bound before early stopping.
- ``progress``: whether progress bars show; *position*: where training stands (epoch, and
  the step within it), which a checkpoint keeps so that a resumed run goes on bit for bit.
- *evaluation mode*: how every estimator runs (:mod:`pvae.infer.evaluation_mode`): a model
  is scored as it is (a beta-VAE at beta = 1), the caller's random state left alone.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from pvae import config, data
from pvae.analysis import anomaly, imputation, latent
from pvae.analysis.diagnostics import Diagnosis, active_units, diagnose
from pvae.config import Config, load_config, save_config
from pvae.errors import ModelError, TrainingDiverged, TrainingInterrupted
from pvae.infer import batches, objectives, precision
from pvae.infer.ais import AnnealedLogLikelihood, BidirectionalBounds, ais, bdmc
from pvae.infer.checkpoint import load_checkpoint, package_version, save_checkpoint
from pvae.infer.device import resolve_device
from pvae.infer.evaluate import estimate_elbo
from pvae.infer.iwae import LogLikelihood, log_likelihood
from pvae.infer.train import EpochStats, FitResult, fit
from pvae.infer.training_streams import Stream
from pvae.models import guides, likelihoods, nets, priors, variants
from pvae.models.factory import build_vae, load, load_vae, vae_state
from pvae.models.vae import VAE
from pvae.viz import plots
from pvae.viz.plots import plot_khat

__version__ = package_version()


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import pvae.nets`` (the flat layout's paths, before the layers) gives the module's
    real one, ``pvae.models.nets``, the same object, with a ``DeprecationWarning``. The
    attributes ``pvae.nets``, ``pvae.priors``, ... stay the public shortcuts they are."""

    def __init__(self, moved: dict[str, str]):
        self.moved = moved

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in self.moved else None

    def create_module(self, spec):
        home = self.moved[spec.name]
        warnings.warn(
            f"import {spec.name} is deprecated and goes in pvae 0.3: import {home} (or use "
            f"the attribute {spec.name} after import pvae)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(home)

    def exec_module(self, module) -> None:
        """The real module ran when it was imported."""


_SHORTCUTS = (
    anomaly, batches, guides, imputation, latent, likelihoods, nets, objectives, plots,
    precision, priors, variants,
)  # fmt: skip
sys.meta_path.append(
    _MovedModules({f"pvae.{m.__name__.rsplit('.', 1)[-1]}": m.__name__ for m in _SHORTCUTS})
)

__all__ = [
    "active_units",
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
    "diagnose",
    "Diagnosis",
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
    "Stream",
    "TrainingDiverged",
    "TrainingInterrupted",
    "vae_state",
]
