"""One HMC transition per AIS step, vectorized over chains and datapoints, and its step sizes.

The transition leaves γ_β invariant (Neal, "MCMC using Hamiltonian dynamics", 2011): fresh
N(0, I) momenta, ``leapfrog_steps`` leapfrog steps of size ε, a Metropolis accept or reject
per chain. Every datapoint has its own ε, shared by its chains.
"""

# No `from __future__ import annotations`: NamedTuple fields need real annotations for the
# API reference (pdoc cannot resolve a string one in the generated __new__).
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from pvae.infer.ais.potential import Ends

# How fast log ε follows the acceptance: log ε += rate * (acceptance - target) per step.
_ADAPTATION_RATE = 0.5
_STEP_SIZE_RANGE = (1e-5, 10.0)


class ChainState(NamedTuple):
    u: torch.Tensor  # [chains, datapoints, D]
    ends: Ends


def hmc_transition(
    potential: Callable[[torch.Tensor], Ends],
    state: ChainState,
    beta: float | torch.Tensor,
    step_size: torch.Tensor,
    leapfrog_steps: int,
    leapfrog: Callable | None = None,
) -> tuple[ChainState, torch.Tensor]:
    """One HMC step targeting γ_β; returns the new state and the acceptance probabilities
    min(1, exp(-ΔH)) [chains, datapoints] (0 where the trajectory diverged to NaN/Inf).
    ``leapfrog`` is :func:`leapfrog_step` on ``potential`` unless given (a captured one)."""
    leapfrog = leapfrog or (lambda *args: leapfrog_step(potential, *args))
    eps = step_size.to(state.u.dtype)[None, :, None]
    momentum = torch.randn_like(state.u)
    energy = -state.ends.log_target(beta) + 0.5 * momentum.square().sum(-1)
    u, ends = state.u, state.ends
    momentum = momentum + 0.5 * eps * ends.grad_target(beta)
    full, half = eps.new_ones(()), eps.new_full((), 0.5)
    for step in range(leapfrog_steps):
        weight = half if step == leapfrog_steps - 1 else full
        u, momentum, ends = leapfrog(u, momentum, eps, beta, weight)
    proposed = -ends.log_target(beta) + 0.5 * momentum.square().sum(-1)
    log_accept = torch.clamp(energy - proposed, max=0.0)
    log_accept = torch.where(torch.isnan(log_accept), -math.inf, log_accept)
    accept = torch.rand_like(log_accept).log() < log_accept
    keep = accept[..., None]
    new = ChainState(
        torch.where(keep, u, state.u),
        Ends(
            torch.where(accept, ends.start, state.ends.start),
            torch.where(accept, ends.end, state.ends.end),
            torch.where(keep, ends.grad_start, state.ends.grad_start),
            torch.where(keep, ends.grad_end, state.ends.grad_end),
        ),
    )
    return new, log_accept.exp()


def leapfrog_step(potential, u, momentum, eps, beta, weight):
    """A position step of size ``eps``, the potential there, and a momentum step of size
    ``weight * eps`` (a half step at the end of a trajectory)."""
    u = u + eps * momentum
    ends = potential(u)
    return u, momentum + weight * eps * ends.grad_target(beta), ends


class AdaptiveStepSize:
    """Per-datapoint ε, moved after every transition toward a target acceptance rate.

    ε for step t is set from the mean acceptance probability of step t - 1 (Wu et al., 2017):
    log ε += 0.5 (acceptance - target). The steps' sizes are recorded, so that other chains
    can run the same sequence of kernels (see :class:`StepSizeSchedule`).
    """

    def __init__(self, initial: torch.Tensor, target: float):
        self.log_size, self.target = initial.log(), target
        self.history: list[torch.Tensor] = []

    def current(self, step: int) -> torch.Tensor:
        size = self.log_size.exp().clamp(*_STEP_SIZE_RANGE)
        self.history.append(size)
        return size

    def update(self, acceptance: torch.Tensor) -> None:
        self.log_size = self.log_size + _ADAPTATION_RATE * (acceptance.mean(0) - self.target)

    def schedule(self) -> torch.Tensor:
        """The sizes used, [transitions, datapoints]."""
        if not self.history:
            return self.log_size.new_empty(0, self.log_size.numel())
        return torch.stack(self.history)


class StepSizeSchedule:
    """A fixed sequence of per-datapoint step sizes [transitions, datapoints]."""

    def __init__(self, sizes: torch.Tensor):
        self.sizes = sizes

    def current(self, step: int) -> torch.Tensor:
        return self.sizes[step]

    def update(self, acceptance: torch.Tensor) -> None:
        pass
