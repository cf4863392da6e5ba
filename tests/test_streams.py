"""fit with several named data streams (Kingma et al.'s M2: labelled and unlabelled digits):
the loss is Pyro's Trace_ELBO and TraceEnum_ELBO of each stream scaled to its size (values
and gradients on shared draws), global sites count once a step, an epoch is one pass over
the longest stream while the others cycle, resuming is exact, errors name the stream."""

import signal

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from test_reliability import InterruptAt
from torch import nn
from torch.nn import functional

import pvae
from pvae.infer.distributed import Cluster
from pvae.infer.held_out import HeldOutBound
from pvae.infer.run_setup import FitSettings, _objectives
from pvae.infer.training_streams import read_streams, streams_device, training_streams

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM, CLASSES, Z_DIM = 6, 3, 2


class TinyM2(nn.Module):
    """M2 of Kingma et al. (2014) in miniature: p(y) p(z) p(x | y, z), q(y | x) q(z | x, y),
    y enumerated in the guide when unobserved, and the classification term the Pyro way: a
    ``pyro.factor`` of the model on labelled rows."""

    def __init__(self, weight=5.0):
        super().__init__()
        self.classifier = nn.Linear(X_DIM, CLASSES)
        self.from_x, self.from_y = nn.Linear(X_DIM, 2 * Z_DIM), nn.Linear(CLASSES, 2 * Z_DIM)
        self.decoder = nn.Linear(Z_DIM + CLASSES, X_DIM)
        self.weight = weight

    def model(self, x, y=None):
        pyro.module("tiny_m2", self)
        with pyro.plate("data", x.shape[0]):
            if y is not None:
                log_q_y = dist.Categorical(logits=self.classifier(x)).log_prob(y)
                pyro.factor("classification", self.weight * log_q_y)
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(CLASSES)), obs=y)
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            y_one_hot = functional.one_hot(y, CLASSES).float()
            shape = torch.broadcast_shapes(z.shape[:-1], y_one_hot.shape[:-1])
            inputs = torch.cat([z.expand(*shape, -1), y_one_hot.expand(*shape, -1)], -1)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(inputs)).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("tiny_m2", self)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                q_y = dist.Categorical(logits=self.classifier(x))
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            out = self.from_x(x) + self.from_y(functional.one_hot(y, CLASSES).float())
            scale = functional.softplus(out[..., Z_DIM:]) + 1e-3
            pyro.sample("z", dist.Normal(out[..., :Z_DIM], scale).to_event(1))


def digits(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, X_DIM), 0.5), generator=generator)
    return x, torch.randint(CLASSES, (n,), generator=generator)


def new_m2(seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    return TinyM2()


def settings(**changes):
    values = dict(
        transform=None, csv_path=None, checkpoint_path=None, checkpoint_extra=None,
        on_epoch_end=None, epoch_schedules=(), more_epochs=None, num_data=None, progress=None,
        batch_size=8,
    )  # fmt: skip
    return FitSettings(**{**values, **changes})


def streams_of(data, model, guide, **changes):
    fit_settings = settings(**changes)
    read = read_streams(data)
    device = streams_device(read, None)
    return training_streams(read, model, guide, fit_settings, device, Cluster()), fit_settings


def test_the_loss_is_pyros_trace_elbo_and_trace_enum_elbo_of_each_stream_values_and_gradients():
    m2 = new_m2()
    (x_l, y_l), (x_u, _) = digits(10, 1), digits(30, 2)
    data = {"labelled": pvae.Stream((x_l, y_l), batch_size=4), "unlabelled": x_u}
    streams, fit_settings = streams_of(data, m2.model, m2.guide)
    objectives = _objectives(m2.model, m2.guide, streams, fit_settings)
    parameters = list(m2.parameters())
    rows = [(x_l[:4], y_l[:4]), (x_u[:8],)]

    pyro.set_rng_seed(3)
    ours = sum(objective.loss(r, part.num_data) for objective, r, part in
               zip(objectives, rows, streams.parts, strict=True))  # fmt: skip
    our_grads = torch.autograd.grad(ours, parameters)

    pyro.set_rng_seed(3)  # the same draws, in the same order: labelled, then unlabelled
    labelled = poutine.scale(scale=10 / 4)
    unlabelled = poutine.scale(scale=30 / 8)
    theirs = pyro.infer.Trace_ELBO(max_plate_nesting=1).differentiable_loss(
        labelled(m2.model), labelled(m2.guide), *rows[0]
    ) + pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        unlabelled(m2.model), unlabelled(m2.guide), *rows[1]
    )
    their_grads = torch.autograd.grad(theirs, parameters)
    torch.testing.assert_close(ours, theirs)
    for our_grad, their_grad in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(our_grad, their_grad)


def global_model(x):
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(theta, 1.0).expand([1]).to_event(1), obs=x)


def global_guide(x):
    pyro.sample("theta", dist.Delta(pyro.param("theta_hat", torch.tensor(0.3))))


def test_a_global_site_counts_once_a_step_whatever_the_number_of_streams():
    pyro.clear_param_store()
    a, b = torch.linspace(-1, 1, 6)[:, None], torch.linspace(0, 2, 9)[:, None]
    streams, fit_settings = streams_of(
        {"a": pvae.Stream(a, batch_size=3), "b": b}, global_model, global_guide, batch_size=3
    )
    objectives = _objectives(global_model, global_guide, streams, fit_settings)
    loss = objectives[0].loss((a[:3],), 6) + objectives[1].loss((b[:3],), 9)
    theta = torch.tensor(0.3)  # q is a point mass: the loss has no noise
    expected = -(
        dist.Normal(0.0, 1.0).log_prob(theta)
        + 6 / 3 * dist.Normal(theta, 1.0).log_prob(a[:3]).sum()
        + 9 / 3 * dist.Normal(theta, 1.0).log_prob(b[:3]).sum()
    )
    torch.testing.assert_close(loss, expected)


def test_an_epoch_is_a_pass_over_the_longest_stream_while_the_others_cycle_in_seeded_orders():
    m2 = new_m2()
    (x_l, y_l), (x_u, _) = digits(5, 1), digits(32, 2)
    x_l = torch.arange(5.0)[:, None].expand(5, X_DIM).contiguous() / 10  # rows tell who they are
    data = {"labelled": pvae.Stream((x_l, y_l), batch_size=2), "unlabelled": x_u}
    streams, _ = streams_of(data, m2.model, m2.guide, batch_size=8)
    assert streams.names[streams.lead] == "unlabelled" and streams.num_data == 37
    position = streams.new_position(seed=4)
    seen = []
    for _ in range(3):  # 3 epochs of 4 steps: 12 labelled minibatches of 2, 2, 1 rows...
        steps = list(streams.epoch(position))
        assert len(steps) == 4 and all(step[1].rows[0].shape[0] == 8 for step in steps)
        position.finish_epoch(None)
        seen += [(step[0].rows[0][:, 0] * 10).round().long().tolist() for step in steps]
    passes = [sum(seen[i : i + 3], []) for i in range(0, 12, 3)]
    assert all(sorted(rows) == list(range(5)) for rows in passes)  # each pass: every row once
    assert len({tuple(rows) for rows in passes}) > 1  # reshuffled
    # The fourth pass is over; it is counted when the next minibatch is asked for.
    cursor = streams.state_dict()["labelled"]
    assert (cursor["passes"], cursor["next_start"]) == (3, 6)


def train_m2(num_epochs, seed=5, init_seed=0, **kwargs):
    m2 = new_m2(init_seed)
    (x_l, y_l), (x_u, _) = digits(7, 1), digits(40, 2)
    streams = {"labelled": pvae.Stream((x_l, y_l), batch_size=3), "unlabelled": x_u}
    result = pvae.fit(m2.model, m2.guide, streams, num_epochs=num_epochs, batch_size=10,
                      seed=seed, progress=False, **kwargs)  # fmt: skip
    return m2, result


def same_run(m2_a, result_a, m2_b, result_b):
    for a, b in zip(m2_a.parameters(), m2_b.parameters(), strict=True):
        assert torch.equal(a, b)
    bounds = [(s.epoch, s.train_bound) for s in result_a.history]
    assert bounds == [(s.epoch, s.train_bound) for s in result_b.history]


def test_resuming_streams_after_an_epoch_and_mid_epoch_is_bit_exact(tmp_path):
    full = train_m2(3)
    train_m2(1, checkpoint_path=tmp_path / "a.pt")
    # The labelled stream stands mid-pass after epoch 1 (4 steps of 3 of its 7 rows).
    assert pvae.load_checkpoint(tmp_path / "a.pt")["streams"]["labelled"]["passes"] == 1
    same_run(*full, *train_m2(3, init_seed=9, resume=tmp_path / "a.pt"))

    m2, x_u = new_m2(), digits(40, 2)[0]
    (x_l, y_l) = digits(7, 1)
    streams = {"labelled": pvae.Stream((x_l, y_l), batch_size=3),
               "unlabelled": pvae.Stream(x_u, transform=InterruptAt(7, signal.SIGINT))}  # fmt: skip
    with pytest.raises(pvae.TrainingInterrupted):
        pvae.fit(m2.model, m2.guide, streams, num_epochs=3, batch_size=10, seed=5,
                 progress=False, checkpoint_path=tmp_path / "b.pt")  # fmt: skip
    saved = pvae.load_checkpoint(tmp_path / "b.pt")["training"]
    assert saved["order"] is not None  # stopped inside an epoch
    full_binarized = _binarized_run(3)
    same_run(*full_binarized, *_binarized_run(3, init_seed=9, resume=tmp_path / "b.pt"))


def _binarized_run(num_epochs, **kwargs):
    """train_m2 with the unlabelled rows binarized afresh each step, as the interrupted run."""
    m2 = new_m2(kwargs.pop("init_seed", 0))
    (x_l, y_l), x_u = digits(7, 1), digits(40, 2)[0]
    streams = {"labelled": pvae.Stream((x_l, y_l), batch_size=3),
               "unlabelled": pvae.Stream(x_u, transform=torch.bernoulli)}  # fmt: skip
    result = pvae.fit(m2.model, m2.guide, streams, num_epochs=num_epochs, batch_size=10,
                      seed=5, progress=False, **kwargs)  # fmt: skip
    return m2, result


def test_resuming_with_other_data_than_the_checkpoints_is_one_clear_error(tmp_path):
    _, _ = train_m2(1, checkpoint_path=tmp_path / "streams.pt")
    m2 = new_m2()
    x_u = digits(40, 2)[0]
    with pytest.raises(ValueError, match="written by a run with the streams .* one dataset"):
        pvae.fit(m2.model, m2.guide, x_u, num_epochs=2, batch_size=10,
                 resume=tmp_path / "streams.pt", progress=False)  # fmt: skip
    pvae.fit(m2.model, m2.guide, x_u, num_epochs=1, batch_size=10, progress=False,
             checkpoint_path=tmp_path / "plain.pt")  # fmt: skip
    (x_l, y_l) = digits(7, 1)
    with pytest.raises(ValueError, match="written by a run with one dataset"):
        pvae.fit(m2.model, m2.guide, {"labelled": (x_l, y_l), "unlabelled": x_u}, num_epochs=2,
                 batch_size=10, resume=tmp_path / "plain.pt", progress=False)  # fmt: skip


def test_one_named_stream_trains_exactly_as_plain_data():
    def run(data):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[4])
        result = pvae.fit(vae.model, vae.guide, data, num_epochs=2, batch_size=8, seed=1,
                          progress=False)  # fmt: skip
        return [p.detach().clone() for p in vae.parameters()], result.history

    x = digits(20, 3)[0]
    (plain, plain_history), (named, named_history) = run(x), run({"only": x})
    assert all(torch.equal(a, b) for a, b in zip(plain, named, strict=True))
    assert [s.train_bound for s in plain_history] == [s.train_bound for s in named_history]


def test_m2_trains_on_streams_with_a_held_out_iwae_and_says_its_figure_is_no_bound():
    _, result = train_m2(2, held_out=digits(12, 4)[0], held_out_num_samples=5)
    last = result.history[-1]
    assert last.held_out_iwae >= last.held_out_elbo - 1e-4  # IWAE_5 with y summed inside
    assert result.train_bound_caveat == (
        "not a bound on log p(x): the model adds pyro.factor terms ('classification')"
    )
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[4], beta=2.0)
    x = digits(20, 3)[0]
    assert pvae.fit(vae.model, vae.guide, x, num_epochs=1, progress=False).train_bound_caveat == (
        "not a bound on log p(x): it weighs the sites 'latent' (poutine.scale, e.g. a KL weight)"
    )
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[4])
    assert (
        pvae.fit(vae.model, vae.guide, x, num_epochs=1, progress=False).train_bound_caveat is None
    )


def test_held_out_streams_weigh_each_stream_by_its_size():
    x_a, x_b = digits(6, 5)[0], digits(18, 6)[0]
    m2, result = train_m2(1, held_out={"a": x_a, "b": x_b}, held_out_num_samples=3)
    alone = [
        HeldOutBound(m2.model, m2.guide, (x,), 3, Cluster(), torch.device("cpu")).evaluate()
        for x in (x_a, x_b)
    ]
    mixed = result.history[0].held_out_elbo, result.history[0].held_out_iwae
    for figure, (a, b) in zip(mixed, zip(*alone, strict=True), strict=True):
        assert figure == pytest.approx((6 * a + 18 * b) / 24)


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "data is an empty dict"),
        ({"has space": digits(5, 1)[0]}, r"data\['has space'\]: stream names are identifiers"),
        ({"a": pvae.Stream(digits(5, 1)[0], batch_size=0)}, r"data\['a'\]: batch_size must be"),
        ({"a": digits(5, 1)[0], "labelled": (torch.eye(5, X_DIM) * 2, torch.zeros(5).long())},
         r"data\['labelled'\].*row 0"),
    ],
)  # fmt: skip
def test_bad_streams_are_one_error_naming_the_stream(data, message):
    m2 = new_m2()
    with pytest.raises(ValueError, match=message):
        pvae.fit(m2.model, m2.guide, data, num_epochs=1, progress=False)
