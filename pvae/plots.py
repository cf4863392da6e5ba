"""Pictures of a trained VAE (PNG files): samples, reconstructions, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.utils import save_image


def _as_images(x: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    return x.detach().float().cpu().reshape(-1, *image_shape)


def save_sample_grid(
    samples: torch.Tensor, path: str | Path, image_shape=(1, 28, 28), nrow: int = 10
) -> Path:
    """Save flat images (values in [0, 1]) as one grid PNG.

    Example::

        >>> save_sample_grid(vae.sample(100), "samples.png")  # doctest: +SKIP
    """
    path = Path(path)
    save_image(_as_images(samples, image_shape), path, nrow=nrow, padding=2, pad_value=0.5)
    return path


def save_reconstructions(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    path: str | Path,
    image_shape=(1, 28, 28),
) -> Path:
    """Save originals (odd rows) above their reconstructions (even rows), 10 per row.

    Example::

        >>> save_reconstructions(x[:50], vae.reconstruct(x[:50]), "recon.png")  # doctest: +SKIP
    """
    path = Path(path)
    per_row = 10
    pairs = []
    for start in range(0, originals.shape[0], per_row):
        pairs += [originals[start : start + per_row], reconstructions[start : start + per_row]]
    rows = [_as_images(row, image_shape) for row in pairs]
    save_image(torch.cat(rows), path, nrow=per_row, padding=2, pad_value=0.5)
    return path


def save_training_curves(history: Sequence, path: str | Path) -> Path:
    """Plot the training bound and the held-out ELBO (nats per datapoint) against the epoch.

    ``history`` is :attr:`pvae.FitResult.history` (or dictionaries with the same keys).

    Example::

        >>> save_training_curves(result.history, "elbo.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row if isinstance(row, dict) else vars(row) for row in history]
    epochs = [row["epoch"] for row in rows]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(epochs, [row["train_bound"] for row in rows], label="train bound")
    held_out = [
        (row["epoch"], row["held_out_elbo"]) for row in rows if row["held_out_elbo"] is not None
    ]
    if held_out:
        axes.plot(*zip(*held_out, strict=True), label="held-out ELBO")
    axes.set_xlabel("epoch")
    axes.set_ylabel("nats per datapoint")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
