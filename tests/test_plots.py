import numpy as np
import torch
from PIL import Image

import pvae
from pvae.train import EpochStats


def image(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def test_sample_grid_is_a_non_blank_image_of_the_expected_size(tmp_path):
    samples = torch.rand(100, 784)
    pixels = image(pvae.plots.save_sample_grid(samples, tmp_path / "s.png"))
    # 10 x 10 tiles of 28 pixels with 2-pixel padding around each.
    assert pixels.shape == (10 * 30 + 2, 10 * 30 + 2)
    assert pixels.std() > 10


def test_reconstructions_alternate_original_and_reconstruction_rows(tmp_path):
    originals, reconstructions = torch.zeros(20, 784), torch.ones(20, 784)
    pixels = image(pvae.plots.save_reconstructions(originals, reconstructions, tmp_path / "r.png"))
    assert pixels.shape == (4 * 30 + 2, 10 * 30 + 2)
    row_means = [pixels[2 + 30 * r : 30 * (r + 1), 2:-2].mean() for r in range(4)]
    assert row_means[0] < 50 and row_means[1] > 200 and row_means[2] < 50 and row_means[3] > 200


def test_training_curves_plot(tmp_path):
    history = [EpochStats(e, -200.0 + 10 * e, -210.0 + 9 * e, 0.1) for e in range(1, 6)]
    pixels = image(pvae.plots.save_training_curves(history, tmp_path / "c.png"))
    assert pixels.shape == (400, 600) and pixels.std() > 5
