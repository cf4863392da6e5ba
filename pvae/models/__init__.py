"""The model zoo: networks, priors, likelihoods and guides by name, :class:`VAE` and variants.

Built on :mod:`pvae.infer` (which trains and evaluates them like any Pyro model) and
:mod:`pvae.data` (the data preparation a likelihood asks for).
"""

from pvae.models.factory import build_vae, load_vae, vae_state
from pvae.models.vae import VAE

__all__ = ["VAE", "build_vae", "load_vae", "vae_state"]
