"""Annealed importance sampling (AIS) with HMC, and bidirectional Monte Carlo (BDMC).

:func:`ais` estimates log p(x) per datapoint, where the IWAE bound of
:func:`pvae.infer.iwae.log_likelihood` is loose; :func:`bdmc` sandwiches log p(x) on data
simulated from the model, to tell how many annealing steps a model needs. One concept per
module: the schedule, the unconstrained latents, the potential, the HMC kernel, the
estimator, BDMC.
"""

from pvae.infer.ais.bdmc import BidirectionalBounds, bdmc
from pvae.infer.ais.estimator import AnnealedLogLikelihood, ais
from pvae.infer.ais.schedule import annealing_schedule

__all__ = ["AnnealedLogLikelihood", "BidirectionalBounds", "ais", "annealing_schedule", "bdmc"]
