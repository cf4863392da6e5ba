"""Annealing schedules: the inverse temperatures 0 = β_0 < β_1 < ... < β_T = 1 of AIS."""

from __future__ import annotations

import torch

from pvae.infer.evaluation import check_count

SCHEDULES = ("sigmoid", "linear")
# Steepness of the sigmoidal schedule, as in Grosse, Ghahramani & Adams (2015) and Wu et al.
# (2017): small steps near β = 0 and β = 1, where the targets change fastest.
_SIGMOID_RADIUS = 4.0


def annealing_schedule(num_steps: int, kind: str = "sigmoid") -> torch.Tensor:
    """The ``num_steps + 1`` inverse temperatures of AIS, from 0 to 1 (float64, CPU).

    ``"sigmoid"`` spaces them as σ(t) for t evenly spaced in [-4, 4], rescaled to [0, 1]
    (Grosse et al., "Sandwiching the marginal likelihood using bidirectional Monte Carlo",
    2015); ``"linear"`` evenly.

    Example::

        >>> annealing_schedule(4, "linear").tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    check_count("num_steps", num_steps)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join(SCHEDULES)}")
    steps = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind == "sigmoid":
        steps = torch.sigmoid(_SIGMOID_RADIUS * (2 * steps - 1))
        steps = (steps - steps[0]) / (steps[-1] - steps[0])
    steps[0], steps[-1] = 0.0, 1.0
    return steps
