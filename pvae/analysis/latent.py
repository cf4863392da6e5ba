"""Paths through the latent space: interpolation, traversal, activity of each dimension.

Plain tensor functions, with no plotting and no training: :mod:`pvae.plots` draws what they
compute, and they work on any latent codes, e.g. the posterior means ``vae.encode(x)[0]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Below this sine of the angle between two codes, the great circle through them is
# numerically undefined (parallel or antiparallel codes): slerp falls back to lerp.
_MIN_SINE = 1e-6

INTERPOLATIONS = ("linear", "spherical")


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation ``(1 - t) z0 + t z1`` along the last dimension.

    ``z0`` and ``z1`` have shape ``[..., z_dim]``, ``t`` shape ``[num_steps]``; the result has
    shape ``[..., num_steps, z_dim]``.

    Example::

        >>> lerp(torch.zeros(2), torch.ones(2), torch.tensor([0.0, 0.5]))
        tensor([[0.0000, 0.0000],
                [0.5000, 0.5000]])
    """
    z0, z1, t = z0.unsqueeze(-2), z1.unsqueeze(-2), t.to(z0).unsqueeze(-1)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation: along the great circle from ``z0`` to ``z1``.

    With Ω the angle between the two codes,

        slerp(z0, z1; t) = sin((1 - t) Ω) / sin Ω · z0 + sin(t Ω) / sin Ω · z1,

    which turns at constant angular speed and, between codes of equal norm, keeps that norm.
    Under a N(0, I) prior in many dimensions almost all mass lies near the sphere of radius
    sqrt(z_dim), and the straight line between two codes cuts through its low-norm interior;
    slerp stays near the shell (White, "Sampling Generative Networks", 2016,
    arXiv:1609.04468; the formula is Shoemake's, "Animating rotation with quaternion
    curves", SIGGRAPH 1985). Where the codes are parallel or antiparallel (sin Ω ≈ 0) the
    great circle is undefined and the straight line is returned.

    Shapes as :func:`lerp`.

    Example::

        >>> e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        >>> slerp(e0, e1, torch.tensor([0.5]))  # on the unit circle, not at norm 0.71
        tensor([[0.7071, 0.7071]])
    """
    # The angle in float64: near-antiparallel codes make the weights cancel catastrophically.
    unit0 = torch.nn.functional.normalize(z0.double(), dim=-1)
    unit1 = torch.nn.functional.normalize(z1.double(), dim=-1)
    cosine = (unit0 * unit1).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cosine).unsqueeze(-2)  # [..., 1, 1]
    sine = torch.sin(omega)
    t = t.to(omega).unsqueeze(-1)  # [num_steps, 1]
    degenerate = sine.abs() < _MIN_SINE
    safe_sine = torch.where(degenerate, torch.ones_like(sine), sine)
    weight0 = torch.where(degenerate, 1 - t, torch.sin((1 - t) * omega) / safe_sine)
    weight1 = torch.where(degenerate, t, torch.sin(t * omega) / safe_sine)
    return weight0.to(z0) * z0.unsqueeze(-2) + weight1.to(z0) * z1.unsqueeze(-2)


def interpolate(
    z0: torch.Tensor, z1: torch.Tensor, num_steps: int = 10, method: str = "spherical"
) -> torch.Tensor:
    """``num_steps`` codes from ``z0`` to ``z1`` (both included), ``"linear"`` or ``"spherical"``.

    Example::

        >>> interpolate(torch.randn(3, 20), torch.randn(3, 20), 8).shape
        torch.Size([3, 8, 20])
    """
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {method!r}: choose one of {INTERPOLATIONS}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2 (both ends), got {num_steps}")
    t = torch.linspace(0.0, 1.0, num_steps, device=z0.device)
    return (lerp if method == "linear" else slerp)(z0, z1, t)


def traverse(
    z: torch.Tensor, values: torch.Tensor, dims: Sequence[int] | None = None
) -> torch.Tensor:
    """Copies of the code ``z`` with one dimension at a time set to each of ``values``.

    Returns shape ``[len(dims), len(values), z_dim]``: row ``i`` varies dimension
    ``dims[i]`` (default: every dimension) and keeps the others at ``z``.

    Example::

        >>> traverse(torch.zeros(3), torch.tensor([-1.0, 1.0]), dims=[2])
        tensor([[[ 0.,  0., -1.],
                 [ 0.,  0.,  1.]]])
    """
    if z.dim() != 1:
        raise ValueError(f"z must be one code of shape [z_dim], got shape {tuple(z.shape)}")
    dims = list(range(z.shape[0])) if dims is None else list(dims)
    values = values.to(z)
    codes = z.expand(len(dims), values.shape[0], z.shape[0]).clone()
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    return codes


@torch.no_grad()
def posterior_means(encode, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The location of q(z|x) for every row of ``x``, encoded ``batch_size`` rows at a time.

    ``encode`` maps a batch of data to ``(loc, scale)``, e.g. ``vae.encode``.

    Example::

        >>> posterior_means(vae.encode, held_out).shape  # doctest: +SKIP
        torch.Size([1000, 20])
    """
    return torch.cat([encode(batch)[0] for batch in x.split(batch_size)])


@torch.no_grad()
def latent_activity(encode, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Variance over the data of each dimension's posterior mean, Cov_x(E_q(z|x)[z_d]).

    A dimension whose posterior mean hardly moves with x (activity below about 0.01) is
    unused by the model: the "active units" measure of Burda, Grosse & Salakhutdinov
    ("Importance Weighted Autoencoders", ICLR 2016, §5.2). Sorting dimensions by it puts
    the informative ones first in a traversal. ``encode`` maps a batch of data to
    ``(loc, scale)``, e.g. ``vae.encode``.

    Example::

        >>> activity = latent_activity(vae.encode, held_out)  # doctest: +SKIP
        >>> int((activity > 0.01).sum())  # active units  # doctest: +SKIP
        17
    """
    return posterior_means(encode, x, batch_size).var(dim=0)


def principal_components(z: torch.Tensor, num_components: int = 2):
    """Project codes ``[N, z_dim]`` onto their first principal components.

    Returns the projections ``[N, num_components]`` and the fraction of the total variance
    that each component explains. ``torch.pca_lowrank`` finds the components, with the
    codes centred on their mean (``center=True``) and ``q`` = min(N, z_dim), at which its
    randomized range finder spans the whole space and is exact; its random sketch is drawn
    from a fixed seed on a forked generator, so the global one is left alone. A component's
    sign is arbitrary: each is flipped so that its largest coefficient is positive, which
    makes the projections the same on every call and every machine.

    Example::

        >>> projected, explained = principal_components(torch.randn(100, 5))
        >>> projected.shape, explained.shape
        (torch.Size([100, 2]), torch.Size([2]))
    """
    centred = z - z.mean(dim=0)
    devices = [z.device] if z.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        _, singular, basis = torch.pca_lowrank(z, q=min(z.shape), center=True)
    basis = basis[:, :num_components]  # [z_dim, k], a component per column
    largest = basis.abs().argmax(dim=0, keepdim=True)
    basis = basis * basis.gather(0, largest).sign()
    variance = singular**2
    return centred @ basis, variance[:num_components] / variance.sum()
