"""Pictures of a trained VAE (PNG files): samples, reconstructions, paths through the latent
space, the latent map, training curves, the k-hat plot of :func:`pvae.log_likelihood` and the
figure of :func:`pvae.diagnose`.

Grids of images are tiled by ``torchvision.utils.make_grid``; labelled grids and charts are
drawn on a bare matplotlib ``Figure``, which leaves pyplot's global state alone. Every
function takes flat images (values in [0, 1]) with an ``image_shape``, and returns the path.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pvae.analysis.diagnostics import Diagnosis
from pvae.analysis.latent import interpolate, posterior_means, principal_components, traverse
from pvae.infer.iwae import LogLikelihood

__all__ = [
    "plot_diagnosis",
    "plot_khat",
    "save_image_table",
    "save_interpolations",
    "save_latent_map",
    "save_reconstructions",
    "save_sample_grid",
    "save_training_curves",
    "save_traversals",
]

_PADDING = 2
_DPI = 100
# Labelled grids: margins (pixels) left of the grid for row labels (_CHAR_WIDTH per character
# of the longest, plus _LABEL_GAP) and above it for each line of column labels and the title.
_CHAR_WIDTH = 8
_LABEL_GAP = 12
_LINE_HEIGHT = 22
_FONT_SIZE = 9


def _image_utils():
    """torchvision.utils, imported when a picture is made: torchvision's import takes about
    1.5 s (its model zoo pulls in torch._dynamo), which ``import pvae`` need not pay."""
    from torchvision import utils

    return utils


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
    _image_utils().save_image(
        _as_images(samples, image_shape), path, nrow=nrow, padding=_PADDING, pad_value=0.5
    )
    return path


def save_reconstructions(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    path: str | Path,
    image_shape=(1, 28, 28),
) -> Path:
    """Save originals above their reconstructions, 10 per row, each row labelled.

    Example::

        >>> save_reconstructions(x[:50], vae.reconstruct(x[:50]), "recon.png")  # doctest: +SKIP
    """
    per_row = min(10, originals.shape[0])
    count = originals.shape[0] // per_row * per_row  # whole rows only
    rows = []
    for start in range(0, count, per_row):
        rows += [originals[start : start + per_row], reconstructions[start : start + per_row]]
    labels = ["original", "reconstruction"] * (len(rows) // 2)
    flat = torch.stack([row.reshape(per_row, -1) for row in rows])
    return save_image_table(flat.float(), path, row_labels=labels, image_shape=image_shape)


def save_image_table(
    images: torch.Tensor,
    path: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
    image_shape=(1, 28, 28),
    scale: int = 2,
) -> Path:
    """Save a table of images ``[rows, columns, ...]`` as a PNG, with optional labels.

    ``images`` holds flat images (``[rows, columns, prod(image_shape)]``) or images
    ``[rows, columns, channels, height, width]`` with 1 or 3 channels, values in [0, 1]. The
    grid is tiled by ``make_grid`` (2-pixel white padding) and drawn ``scale`` times enlarged,
    pixel for pixel. Row labels take a margin on the left of 12 pixels plus 8 per character
    of the longest; the title and every line of the column labels (which may hold ``"\\n"``)
    take 22 pixels on top.

    Example::

        >>> save_image_table(torch.rand(2, 5, 784), "table.png",
        ...                  row_labels=["first", "second"])  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    num_rows, num_columns = images.shape[:2]
    if row_labels is not None and len(row_labels) != num_rows:
        raise ValueError(f"{len(row_labels)} row labels for {num_rows} rows")
    if column_labels is not None and len(column_labels) != num_columns:
        raise ValueError(f"{len(column_labels)} column labels for {num_columns} columns")
    tiles = images.detach().float().cpu()
    if tiles.dim() == 3:
        tiles = tiles.reshape(num_rows, num_columns, *image_shape)
    tiles = tiles.reshape(num_rows * num_columns, *tiles.shape[2:]).clamp(0, 1)
    grid = _image_utils().make_grid(tiles, nrow=num_columns, padding=_PADDING, pad_value=1.0)
    tile_height, tile_width = tiles.shape[-2] + _PADDING, tiles.shape[-1] + _PADDING
    grid_height, grid_width = grid.shape[1] * scale, grid.shape[2] * scale
    left = _LABEL_GAP + _CHAR_WIDTH * max(map(len, row_labels)) if row_labels else 0
    label_lines = max((label.count("\n") + 1 for label in column_labels or []), default=0)
    top = _LINE_HEIGHT * (label_lines + (title is not None))
    width, height = left + grid_width, top + grid_height
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    axes = figure.add_axes((left / width, 0, grid_width / width, grid_height / height))
    axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes.set_axis_off()
    for row, label in enumerate(row_labels or []):
        center = _PADDING + row * tile_height + tile_height / 2
        axes.text(-4, center, label, ha="right", va="center", fontsize=_FONT_SIZE)
    for column, label in enumerate(column_labels or []):
        center = _PADDING + column * tile_width + tile_width / 2
        axes.text(center, -4, label, ha="center", va="bottom", fontsize=_FONT_SIZE)
    if title is not None:
        figure.text(0.5, 1 - 4 / height, title, ha="center", va="top", fontsize=_FONT_SIZE + 1)
    return _save_pixels(figure, path, grey=tiles.shape[1] == 1)


def _save_pixels(figure, path: str | Path, grey: bool) -> Path:
    """Render a figure with Agg and save it as an 8-bit grey or RGB PNG (no alpha channel).

    Grey levels of decoded images compress poorly: one channel instead of four halves the file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = Image.fromarray(np.asarray(canvas.buffer_rgba()))
    path = Path(path)
    pixels.convert("L" if grey else "RGB").save(path, optimize=True)
    return path


@torch.no_grad()
def save_interpolations(
    vae,
    x_start: torch.Tensor,
    x_end: torch.Tensor,
    path: str | Path,
    num_steps: int = 8,
    image_shape=(1, 28, 28),
) -> Path:
    """Decode linear and spherical interpolations between the posterior means of image pairs.

    For each pair (rows of ``x_start`` and ``x_end``) two rows: ``linear`` and
    ``spherical`` (:func:`pvae.latent.slerp`), each the start image, ``num_steps`` decoded
    codes from its posterior mean to the end image's (both included), and the end image.

    Example::

        >>> save_interpolations(vae, held_out[:3], held_out[3:6], "interp.png")  # doctest: +SKIP
    """
    z_start, z_end = vae.encode(x_start)[0], vae.encode(x_end)[0]
    rows, labels = [], []
    for pair in range(x_start.shape[0]):
        for method in ("linear", "spherical"):
            path_codes = interpolate(z_start[pair], z_end[pair], num_steps, method)
            decoded = vae.decode(path_codes)
            rows.append(torch.cat([x_start[pair : pair + 1], decoded, x_end[pair : pair + 1]]))
            labels.append(method)
    steps = [f"{t:.2g}" for t in np.linspace(0, 1, num_steps)]
    return save_image_table(
        torch.stack(rows),
        path,
        row_labels=labels,
        column_labels=["start", f"t={steps[0]}", *steps[1:], "end"],
        image_shape=image_shape,
    )


@torch.no_grad()
def save_traversals(
    vae,
    x: torch.Tensor,
    path: str | Path,
    values: torch.Tensor | None = None,
    dims: Sequence[int] | None = None,
    image_shape=(1, 28, 28),
) -> Path:
    """Decode the posterior mean of one image ``x`` with one latent dimension varied per row.

    Each row sets dimension ``d`` (default: all, in order; pass them sorted by
    :func:`pvae.latent.latent_activity` to see the used ones first) to each of ``values``
    (default: -3 to 3 in 9 steps, ±3 prior standard deviations of a N(0, I) prior).

    Example::

        >>> order = pvae.latent.latent_activity(vae.encode, held_out).argsort(descending=True)
        ... # doctest: +SKIP
        >>> save_traversals(vae, held_out[0], "traversal.png", dims=order[:10])  # doctest: +SKIP
    """
    values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values)
    z = vae.encode(x.reshape(1, -1))[0][0]
    dims = list(range(z.shape[0])) if dims is None else [int(d) for d in dims]
    decoded = vae.decode(traverse(z, values, dims))
    return save_image_table(
        decoded,
        path,
        row_labels=[f"z{d}" for d in dims],
        column_labels=[f"{v:+.1f}" for v in values.tolist()],
        image_shape=image_shape,
    )


@torch.no_grad()
def _prior_quantiles(vae, num_per_side: int, num_draws: int = 100_000) -> torch.Tensor:
    """Quantiles 0.05..0.95 of each prior marginal [z_dim, num_per_side] (N(0, 1): ±1.64)."""
    prior = vae.prior()
    levels = torch.linspace(0.05, 0.95, num_per_side)
    marginal = getattr(prior, "base_dist", prior)
    try:  # exact where the marginals have an inverse CDF (a Normal prior)
        return marginal.icdf(levels.unsqueeze(-1).to(marginal.mean)).T.cpu()
    except (NotImplementedError, AttributeError, RuntimeError, ValueError):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            draws = prior.sample((num_draws,)).cpu()
        return torch.quantile(draws, levels, dim=0).T


@torch.no_grad()
def save_latent_map(
    vae,
    x: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    num_per_side: int = 20,
    image_shape=(1, 28, 28),
) -> Path:
    """The latent space at a glance: the decoded manifold for z_dim ≤ 2, else a scatter plot.

    For ``z_dim`` 2 (or 1), the decoder's mean on a ``num_per_side`` grid of prior quantiles
    0.05 to 0.95 of each dimension (Kingma & Welling, "Auto-Encoding Variational Bayes",
    ICLR 2014, fig. 4); ``x`` and ``labels`` are not used. For larger ``z_dim``, the
    posterior means of ``x`` projected on their first two principal components, coloured by
    ``labels``.

    Example::

        >>> save_latent_map(vae, held_out, held_out_labels, "latent_map.png")  # doctest: +SKIP
    """
    z_dim = vae.z_dim
    if z_dim <= 2:
        quantiles = _prior_quantiles(vae, num_per_side)
        if z_dim == 1:
            codes = quantiles.T.unsqueeze(0)  # [1, num_per_side, 1]
            row_labels = None
        else:
            # Rows: z1 from high (top) to low; columns: z0 from low to high, as on a chart.
            z0, z1 = torch.meshgrid(quantiles[0], quantiles[1].flip(0), indexing="xy")
            codes = torch.stack([z0, z1], dim=-1)
            row_labels = [f"z1={v:+.2f}" for v in quantiles[1].flip(0).tolist()]
        decoded = vae.decode(codes.to(x.device))
        return save_image_table(
            decoded,
            path,
            row_labels=row_labels,
            column_labels=[f"{v:.1f}" for v in quantiles[0].tolist()],
            title="decoder means on a grid of prior quantiles (columns: z0)",
            image_shape=image_shape,
            scale=1,
        )
    return _save_latent_scatter(vae, x, labels, path)


def _save_latent_scatter(vae, x: torch.Tensor, labels: torch.Tensor, path: str | Path) -> Path:
    from matplotlib.figure import Figure

    means = posterior_means(vae.encode, x)
    projected, explained = principal_components(means.double().cpu())
    labels = labels.cpu().numpy()
    figure = Figure(figsize=(6, 5), dpi=_DPI)
    axes = figure.subplots()
    for index, label in enumerate(np.unique(labels)):
        chosen = labels == label
        axes.scatter(
            projected[chosen, 0],
            projected[chosen, 1],
            s=5,
            alpha=0.7,
            color=f"C{index % 10}",
            label=str(label),
        )
    axes.set_xlabel(f"PC 1 of the posterior means ({100 * explained[0]:.0f}% of variance)")
    axes.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}%)")
    axes.set_title(f"posterior means of {len(labels)} images (z_dim {vae.z_dim})")
    axes.legend(markerscale=3, fontsize=8, loc="best", title="label")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def save_training_curves(history: Sequence, path: str | Path) -> Path:
    """Plot the training bound and the held-out ELBO (nats per datapoint) against the epoch.

    ``history`` is :attr:`pvae.FitResult.history` (or dictionaries with the same keys).

    Example::

        >>> save_training_curves(result.history, "elbo.png")  # doctest: +SKIP
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [row if isinstance(row, dict) else vars(row) for row in history]
    # The training bound averages the epoch's minibatches, so it stands at the epoch's
    # middle; the held-out ELBO is measured at its end. Plotted so, the two are comparable.
    middles = [row["epoch"] - 0.5 for row in rows]
    figure = Figure(figsize=(6, 4), dpi=_DPI)
    axes = figure.subplots()
    axes.plot(
        middles, [row["train_bound"] for row in rows], label="train bound (mean over the epoch)"
    )
    held_out = [
        (row["epoch"], row["held_out_elbo"]) for row in rows if row["held_out_elbo"] is not None
    ]
    if held_out:
        axes.plot(*zip(*held_out, strict=True), label="held-out ELBO (end of the epoch)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("nats per datapoint")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def plot_khat(result: LogLikelihood, path: str | Path) -> Path:
    """Save a PNG scatter of k-hat per datapoint with the reliability threshold and its value.

    The scatter is ``arviz.plot_khat`` (points above the threshold drawn darker); the
    threshold is the one :attr:`pvae.LogLikelihood.khat_threshold` checks against, which
    depends on the number of samples K (Vehtari et al., 2024), drawn and labelled with its
    value.

    Example::

        >>> plot_khat(result, "khat.png")  # doctest: +SKIP
    """
    import arviz
    import xarray  # arviz's own dependency: its ELPDData holds k-hat as a DataArray

    # A bare Figure draws with Agg and leaves pyplot's global state (and backend) alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    threshold = result.khat_threshold
    khats = xarray.DataArray(result.pareto_k.double().numpy(), dims=["datapoint"])
    # An ELPDData carries the threshold (arviz's good_k), so arviz's darker points are ours.
    elpd = arviz.ELPDData(data=[khats, threshold], index=["pareto_k", "good_k"])
    with warnings.catch_warnings():
        # Legacy arviz (0.x) normalizes its keyword arguments in a way matplotlib 3.11
        # deprecates; the warning is arviz's to fix, not the user's.
        warnings.filterwarnings("ignore", message=".*alias_mapping to normalize_kwargs")
        arviz.plot_khat(elpd, ax=axes, show=False, markersize=12)
    if math.isfinite(threshold):
        label = f"threshold k̂ = {threshold:.2f} (K = {result.num_samples})"
        axes.axhline(threshold, color="red", linestyle="--", label=label)
        axes.legend()
    axes.set_xlabel("datapoint")
    axes.set_ylabel("Pareto k̂")
    axes.set_title(f"PSIS k̂ of the IWAE_{result.num_samples} weights")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def plot_diagnosis(result: Diagnosis, path: str | Path) -> Path:
    """Save a PNG of a :class:`pvae.Diagnosis`: (a) the KL per latent unit, active units
    marked, and (b) the inference gap log p(x) − ELBO(q_φ) stacked from its amortization gap
    (ELBO(q*) − ELBO(q_φ)) and approximation gap (log p(x) − ELBO(q*)), means over the data.

    Panel (b) says so when the gaps were not computed (``diagnose(..., gaps=False)``).

    Example::

        >>> plot_diagnosis(pvae.diagnose(vae.model, vae.guide, x[:500]), "diagnosis.png")
        ... # doctest: +SKIP
    """
    figure = _diagnosis_figure(result)
    path = Path(path)
    figure.savefig(path)
    return path


def _diagnosis_figure(result: Diagnosis):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), dpi=_DPI)
    units, gaps = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    _plot_units(units, result)
    _plot_gaps(gaps, result)
    figure.tight_layout()
    return figure


def _plot_units(axes, result: Diagnosis) -> None:
    """Panel (a): E_x KL(q(z_u|x) ‖ p(z_u)) per unit, coloured by whether the unit is active;
    where q or p has no per-unit factors (a VampPrior, a flow), each unit's activity
    Cov_x E[z_u|x] on a log scale, with the threshold."""
    kl = result.kl_per_unit.double().numpy()
    by_kl = not np.isnan(kl).all()
    values = kl if by_kl else result.encoding_variance.double().numpy()
    error = result.kl_per_unit_se.double().numpy() if by_kl else None
    active = result.active.numpy()
    positions = np.arange(len(values))
    for chosen, colour, label in ((active, "C0", "active"), (~active, "C7", "inactive")):
        if chosen.any():
            axes.bar(
                positions[chosen], np.nan_to_num(values[chosen]),
                yerr=None if error is None else error[chosen],
                color=colour, label=f"{label} ({int(chosen.sum())})",
            )  # fmt: skip
    step = max(1, math.ceil(len(values) / 40))  # at most 40 names under the bars
    axes.set_xticks(positions[::step], result.unit_names[::step], rotation=90, fontsize=7)
    axes.set_xlim(-0.6, len(values) - 0.4)
    shown = "KL per latent unit" if by_kl else "activity per latent unit (no per-unit KL)"
    axes.set_title(
        f"(a) {shown}: {result.num_active} of {len(values)} active\n"
        f"(active: Cov_x E[z_u|x] > {result.active_threshold:g})",
        fontsize=10,
    )
    if by_kl:
        axes.set_ylabel("E_x KL(q(z_u|x) ‖ p(z_u)) (nats)")
    else:
        axes.set_yscale("log")
        axes.axhline(result.active_threshold, color="k", linestyle=":", linewidth=1)
        axes.set_ylabel("Cov_x E[z_u|x]")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, axis="y")


def _plot_gaps(axes, result: Diagnosis) -> None:
    """Panel (b): a bar from ELBO(q_φ) up to log p(x), split at ELBO(q*), with each level."""
    if result.log_px is None or result.optimal_elbo_per_datapoint is None:
        axes.set_title("(b) inference gaps", fontsize=10)
        axes.text(0.5, 0.5, "gaps were not computed\n(diagnose(..., gaps=False))",
                  transform=axes.transAxes, ha="center", va="center")  # fmt: skip
        axes.set_xticks([])
        axes.set_yticks([])
        return
    elbo = result.elbo_per_datapoint.mean().item()
    optimal = result.optimal_elbo_per_datapoint.mean().item()
    log_px = result.log_px.mean().item()
    amortization, approximation = optimal - elbo, log_px - optimal
    axes.bar(0, amortization, bottom=elbo, width=0.5, color="C1",
             label=f"amortization gap {amortization:.3f}")  # fmt: skip
    axes.bar(0, approximation, bottom=optimal, width=0.5, color="C2",
             label=f"approximation gap {approximation:.3f}")  # fmt: skip
    levels = (
        ("ELBO(q_φ)", elbo),
        ("ELBO(q*)", optimal),
        (f"log p(x) [{result.log_px_source}]", log_px),
    )
    for label, value in levels:
        axes.axhline(value, color="black", linestyle=":", linewidth=1)
        axes.text(0.3, value, f"{label} {value:.3f}", va="bottom", fontsize=8)
    span = max(abs(amortization) + abs(approximation), 1e-3)
    low, high = min(elbo, optimal, log_px), max(elbo, optimal, log_px)
    axes.set_ylim(low - 0.1 * span, high + 0.15 * span)
    axes.set_xlim(-0.4, 1.8)
    axes.set_xticks([])
    axes.set_ylabel("nats per datapoint (mean)")
    axes.set_title(
        f"(b) inference gap {log_px - elbo:.3f} nats "
        f"({result.elbo_per_datapoint.numel()} datapoints)",
        fontsize=10,
    )
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.03), ncol=2)
    axes.grid(alpha=0.3, axis="y")
