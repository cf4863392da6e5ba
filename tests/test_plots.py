import numpy as np
import pytest
import torch
from PIL import Image

import pvae
from pvae.infer.train import EpochStats


def image(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def test_sample_grid_is_a_non_blank_image_of_the_expected_size(tmp_path):
    samples = torch.rand(100, 784)
    pixels = image(pvae.plots.save_sample_grid(samples, tmp_path / "s.png"))
    # 10 x 10 tiles of 28 pixels with 2-pixel padding around each.
    assert pixels.shape == (10 * 30 + 2, 10 * 30 + 2)
    assert pixels.std() > 10


def test_reconstructions_alternate_labelled_original_and_reconstruction_rows(tmp_path):
    originals, reconstructions = torch.zeros(20, 784), torch.ones(20, 784)
    pixels = image(pvae.plots.save_reconstructions(originals, reconstructions, tmp_path / "r.png"))
    # save_image_table's layout: tiles of 28 + 2 pixels drawn twice enlarged, right of a
    # label margin of 12 + 8 pixels per character of "reconstruction"
    left = 12 + 8 * len("reconstruction")
    assert pixels.shape == (2 * (4 * 30 + 2), left + 2 * (10 * 30 + 2))
    rows = [pixels[2 * (2 + 30 * r) : 2 * 30 * (r + 1), left + 4 : -4] for r in range(4)]
    assert [bool(row.mean() > 128) for row in rows] == [False, True, False, True]
    margins = [pixels[2 * (2 + 30 * r) : 2 * 30 * (r + 1), :left] for r in range(4)]
    assert all(margin.min() < 128 for margin in margins)  # each row's label is written


def test_training_curves_plot(tmp_path):
    history = [EpochStats(e, -200.0 + 10 * e, -210.0 + 9 * e, 0.1) for e in range(1, 6)]
    pixels = image(pvae.plots.save_training_curves(history, tmp_path / "c.png"))
    assert pixels.shape == (400, 600) and pixels.std() > 5


def test_training_curves_have_whole_epoch_ticks_and_the_training_bound_mid_epoch(monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, path: saved.append(figure))
    history = [EpochStats(e, -200.0 + e, -201.0 + e, 0.1) for e in range(1, 4)]
    pvae.plots.save_training_curves(history, "unused.png")
    (axes,) = saved[0].axes
    train, held_out = axes.get_lines()
    assert list(train.get_xdata()) == [0.5, 1.5, 2.5] and list(held_out.get_xdata()) == [1, 2, 3]
    saved[0].canvas.draw()
    assert all(float(tick).is_integer() for tick in axes.get_xticks())


def tiny_vae(z_dim=3):
    return pvae.build_vae(784, z_dim=z_dim, hidden_dims=[16])


def test_image_table_draws_the_grid_pixel_for_pixel_with_label_margins(tmp_path):
    images = torch.zeros(2, 3, 784)
    images[1] = 1.0
    path = pvae.plots.save_image_table(
        images, tmp_path / "t.png", row_labels=["first", "second"], column_labels=["x", "y", "z"]
    )
    pixels = image(path)
    # 2 x 3 tiles of 28 + 2 padding pixels, drawn twice as large, with a margin on the left
    # for the row labels (12 + 8 per character of "second") and a 22-pixel line on top for
    # the column labels.
    left = 12 + 8 * 6
    assert pixels.shape == (22 + 2 * (2 * 30 + 2), left + 2 * (3 * 30 + 2))
    top_tile = pixels[22 + 4 : 22 + 4 + 56, left + 4 : left + 4 + 56]
    bottom_tile = pixels[22 + 64 : 22 + 64 + 56, left + 4 : left + 4 + 56]
    assert top_tile.max() < 10 and bottom_tile.min() > 245
    assert pixels[:22].std() > 5 and pixels[:, :left].std() > 5  # the labels are drawn
    # Grey images make a one-channel PNG (half the bytes), colour ones an RGB PNG.
    assert Image.open(path).mode == "L"
    colour = pvae.plots.save_image_table(torch.rand(1, 2, 3, 28, 28), tmp_path / "c.png")
    assert Image.open(colour).mode == "RGB" and image(colour).shape == (
        2 * (30 + 2),
        2 * (2 * 30 + 2),
    )
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        pvae.plots.save_image_table(images, tmp_path / "u.png", row_labels=["a"])
    # Two-line column labels take two lines.
    path = pvae.plots.save_image_table(images, tmp_path / "v.png", column_labels=["a\nb"] * 3)
    assert image(path).shape == (2 * 22 + 2 * (2 * 30 + 2), 2 * (3 * 30 + 2))


def test_interpolations_show_two_rows_per_pair(tmp_path):
    x = torch.rand(4, 784)
    pixels = image(pvae.plots.save_interpolations(tiny_vae(), x[:2], x[2:], tmp_path / "i.png"))
    # 2 pairs x (linear, spherical) rows; start + 8 steps + end columns; both label margins.
    assert pixels.shape == (22 + 2 * (4 * 30 + 2), 12 + 8 * len("spherical") + 2 * (10 * 30 + 2))
    assert pixels.std() > 10


def test_traversals_show_one_row_per_dimension(tmp_path):
    path = pvae.plots.save_traversals(tiny_vae(), torch.rand(784), tmp_path / "t.png", dims=[2, 0])
    pixels = image(path)
    assert pixels.shape == (22 + 2 * (2 * 30 + 2), 12 + 8 * len("z2") + 2 * (9 * 30 + 2))
    assert pixels.std() > 10


def test_latent_map_is_a_decoded_manifold_for_two_dimensions(tmp_path):
    x, labels = torch.rand(50, 784), torch.arange(50) % 5
    path = pvae.plots.save_latent_map(tiny_vae(2), x, labels, tmp_path / "m.png", num_per_side=6)
    pixels = image(path)
    # 6 x 6 tiles at scale 1 under a title and the column labels, row labels on the left.
    assert pixels.shape == (2 * 22 + 6 * 30 + 2, 12 + 8 * len("z1=+1.64") + 6 * 30 + 2)
    assert pixels.std() > 10


def test_latent_map_scatters_projected_posterior_means_otherwise(tmp_path):
    x, labels = torch.rand(50, 784), torch.arange(50) % 5
    pixels = image(pvae.plots.save_latent_map(tiny_vae(3), x, labels, tmp_path / "m.png"))
    assert pixels.shape == (500, 600) and pixels.std() > 5


def test_khat_plot(tmp_path):
    vae = tiny_vae()
    x = torch.bernoulli(torch.full((10, 784), 0.3))
    result = pvae.log_likelihood(vae.model, vae.guide, x, 50, seed=0)
    pixels = image(pvae.plots.plot_khat(result, tmp_path / "k.png"))
    assert pixels.shape == (400, 600) and pixels.std() > 5


def test_import_pvae_leaves_torchvision_for_when_a_picture_is_made():
    """torchvision's import costs about 1.5 s (its model zoo); the CLI and scripts that make
    no picture should not pay it."""
    import subprocess
    import sys

    check = "import sys, pvae; print('torchvision' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
