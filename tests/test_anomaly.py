import pytest
import torch

import pvae
from pvae.analysis.anomaly import _auroc_by_ranks, anomaly_scores, auroc, auroc_interval


def test_auroc_is_the_probability_that_an_anomaly_outscores_a_normal_image():
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), labels) == 1.0
    assert auroc(torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    # Pairs (anomaly, normal): 0.25 beats 0.1 and 0.2 but not 0.3; 0.5 beats all: 5 of 6.
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.25, 0.5]), labels) == pytest.approx(5 / 6)


def test_rank_formula_of_the_bootstrap_is_sklearns_auroc_with_ties():
    scores = torch.tensor([0.1, 0.3, 0.3, 0.7, 0.3, 0.2, 0.5, 0.5, 0.9]).double()
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0])
    expected = auroc(scores, labels)  # anomalies first, as the bootstrap lays them out
    assert _auroc_by_ranks(scores.numpy()[None], 4)[0] == pytest.approx(expected)


def test_bootstrap_interval_brackets_the_auroc_and_shrinks_with_more_data():
    torch.manual_seed(0)
    widths = []
    for n in (50, 2000):
        labels = torch.arange(2 * n) >= n
        scores = torch.randn(2 * n) + labels.float()  # AUROC Φ(1/√2) ≈ 0.76
        low, high = auroc_interval(scores, labels, num_resamples=200)
        assert low <= auroc(scores, labels) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3
    assert low > 0.72 and high < 0.80


def test_scores_of_a_vae_obey_jensen_and_the_reconstruction_definition():
    vae = pvae.build_vae(20, z_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((30, 20), 0.3))
    scores = anomaly_scores(vae, x, num_samples=50, seed=0, batch_size=7)
    # log of a mean of weights >= mean of their logs, datapoint by datapoint: −IWAE <= −ELBO.
    assert (scores.negative_iwae <= scores.negative_elbo + 1e-9).all()
    expected = ((x - vae.reconstruct(x)) ** 2).sum(1)
    # Both are float32 sums (in batches of 7 there, all at once here): float32's tolerance.
    torch.testing.assert_close(scores.reconstruction_error.float(), expected, rtol=1e-5, atol=1e-5)
    assert list(scores.as_dict()) == ["-IWAE_50", "-ELBO", "reconstruction error"]
    assert all(s.shape == (30,) and s.dtype == torch.float64 for s in scores.as_dict().values())


def test_a_trained_vae_finds_images_unlike_its_training_data():
    torch.manual_seed(0)
    # Normal images light up the first half of the pixels, anomalies the second half.
    probs = torch.cat([torch.full((10,), 0.8), torch.full((10,), 0.05)])
    normal, anomalous = torch.bernoulli(probs.expand(400, 20)), torch.bernoulli(probs.flip(0))
    vae = pvae.build_vae(20, z_dim=2, hidden_dims=[16])
    pvae.fit(vae.model, vae.guide, normal[:300], num_epochs=20, batch_size=300, progress=False)
    x = torch.cat([normal[300:], anomalous.expand(100, 20)])
    is_anomaly = torch.arange(200) >= 100
    for score in anomaly_scores(vae, x, num_samples=20).as_dict().values():
        assert auroc(score, is_anomaly) > 0.95


def example_module(name):
    import importlib.util
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    spec = importlib.util.spec_from_file_location(name, examples / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(examples))  # as when run as a script: its helpers import
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(examples))
    return module


def test_the_example_refuses_a_checkpoint_that_saw_the_left_out_class(tmp_path):
    example = example_module("anomaly_detection")
    vae = pvae.build_vae(784, z_dim=2, hidden_dims=[8])
    config = {"held_out_class": 3, "dataset": "mnist"}
    path = pvae.save_checkpoint(tmp_path / "c.pt", pvae.vae_state(vae, config=config))
    args = example.parser().parse_args(["--checkpoint", str(path), "--held-out-class", "3"])
    assert example.load_trained(args, "cpu").z_dim == 2
    args.held_out_class = 0
    with pytest.raises(ValueError, match="cannot be used to detect it"):
        example.load_trained(args, "cpu")
    unlabelled = pvae.save_checkpoint(tmp_path / "d.pt", pvae.vae_state(vae))  # e.g. mnist_svi's
    with pytest.raises(ValueError, match="held_out_class=None"):
        example.load_trained(example.parser().parse_args(["--checkpoint", str(unlabelled)]), "cpu")
