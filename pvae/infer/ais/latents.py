"""The continuous latents of a datapoint chunk as one unconstrained vector per chain and datapoint.

HMC moves a point u in R^D; each latent site z = T(u) lies in its support through Pyro's
bijection ``biject_to(support)``, and densities over u carry T's log-det-Jacobian. Site values
have shape [chains, ..., datapoints, ..., event] (the data plate's axis anywhere among the
batch axes); u has shape [chains, datapoints, D], the sites' unconstrained values flattened
one after another.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import biject_to


class LatentLayout:
    """Where each latent site sits in the flat unconstrained vector, and its bijection.

    ``axes`` are the sites' data axes in their values, ``supports`` the model's supports,
    ``nesting`` the plates' batch dimensions (values have ``nesting + 1`` batch axes).

    Example::

        >>> layout = LatentLayout({"z": torch.zeros(4, 3, 2)}, {"z": 1},
        ...                       {"z": torch.distributions.constraints.real_vector}, 1)
        >>> layout.flatten({"z": torch.zeros(4, 3, 2)}).shape
        torch.Size([4, 3, 2])
    """

    def __init__(self, values: dict, axes: dict, supports: dict, nesting: int):
        self.axes, self.nesting = axes, nesting
        self.transforms = {name: biject_to(supports[name]) for name in values}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, value in values.items():
            shape = self.transforms[name].inverse_shape(value.shape)
            # Unconstrained shape with the data axis moved next to the chains' axis.
            moved = list(shape)
            moved.insert(1, moved.pop(axes[name]))
            self.shapes[name] = tuple(moved)
        self.size = sum(math.prod(shape[2:]) for shape in self.shapes.values())

    def flatten(self, values: dict) -> torch.Tensor:
        """Constrained site values -> u [chains, datapoints, D]."""
        pieces = []
        for name, transform in self.transforms.items():
            u = transform.inv(values[name]).movedim(self.axes[name], 1)
            pieces.append(u.reshape(u.shape[0], u.shape[1], -1))
        return torch.cat(pieces, dim=-1)

    def unflatten(self, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """u -> constrained site values and the log-det-Jacobian of u -> z [chains, datapoints]."""
        values, log_det, offset = {}, 0.0, 0
        for name, transform in self.transforms.items():
            shape = self.shapes[name]
            size = math.prod(shape[2:])
            piece = u[..., offset : offset + size].reshape(shape).movedim(1, self.axes[name])
            offset += size
            values[name] = transform(piece)
            jacobian = transform.log_abs_det_jacobian(piece, values[name])
            log_det = log_det + self._per_datapoint(jacobian, self.axes[name])
        return values, log_det

    def _per_datapoint(self, term: torch.Tensor, data_axis: int) -> torch.Tensor:
        """Sum a per-site term over every axis but the chains' and the data axis."""
        term = term.reshape((1,) * (self.nesting + 1 - term.dim()) + term.shape)
        if term.dim() > self.nesting + 1:  # event axes the bijection left unsummed
            term = term.sum(tuple(range(self.nesting + 1, term.dim())))
        others = tuple(a for a in range(1, self.nesting + 1) if a != data_axis)
        if others:
            term = term.sum(others)
        return term.reshape(term.shape[0], -1)
