"""The captured training step (fit's ``compile``): the same numbers as the eager step, on
every objective, or the eager step with one warning; never a value frozen silently.

The graph as traced (``"capture"``) runs the eager step's kernels on the eager step's random
numbers, so its runs are bit for bit the eager runs; inductor's fused loops round otherwise.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from test_streams import digits, train_m2
from torch import nn

import pvae
from pvae.infer import captured_steps
from pvae.infer.capture import CaptureFailed, capture, capture_loss
from pvae.infer.captured_steps import AUTO_SECONDS, AutoDecision, choose_backend
from pvae.infer.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM, Z_DIM = 6, 2


class Pair(nn.Module):
    """A hand-written model/guide: Bernoulli decoder, Gaussian guide, a constrained
    ``pyro.param`` (the prior's scale), an optional batch norm and an optional mixture
    prior whose component is enumerated in the model."""

    def __init__(self, batch_norm=False, components=0):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(X_DIM, 8), nn.BatchNorm1d(8) if batch_norm else nn.Identity(), nn.Tanh()
        )
        self.loc, self.log_scale = nn.Linear(8, Z_DIM), nn.Linear(8, Z_DIM)
        self.decoder = nn.Linear(Z_DIM, X_DIM)
        self.components = components
        if components:
            self.means = nn.Parameter(torch.randn(components, Z_DIM))

    def model(self, x):
        pyro.module("pair", self)
        prior_scale = pyro.param(
            "prior_scale", torch.tensor(1.0), constraint=dist.constraints.positive
        )
        with pyro.plate("data", x.shape[0]):
            if self.components:
                c = pyro.sample(
                    "c",
                    dist.Categorical(logits=x.new_zeros(self.components)),
                    infer={"enumerate": "parallel"},
                )
                z = pyro.sample("z", dist.Normal(self.means[c], prior_scale).to_event(1))
            else:
                z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), prior_scale).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("pair", self)
        hidden = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            scale = self.log_scale(hidden).exp()
            pyro.sample("z", dist.Normal(self.loc(hidden), scale).to_event(1))


def data(n=40, seed=1):
    return digits(n, seed)[0]


def train(pair_options=(), num_epochs=3, batch_size=16, pair_class=None, **fit_options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = (pair_class or Pair)(**dict(pair_options)).to(fit_options.get("device") or "cpu")
    result = pvae.fit(pair.model, pair.guide, data(), num_epochs=num_epochs,
                      batch_size=batch_size, seed=2, progress=False, **fit_options)  # fmt: skip
    return pair, result


def state_of(pair):
    store = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    return {**{k: v.detach().clone() for k, v in pair.state_dict().items()}, **store}


def assert_same_training(a, b, exact=True):
    (pair_a, result_a), (pair_b, result_b) = a, b
    state_a, state_b = state_of(pair_a), state_of(pair_b)
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        if exact:
            assert torch.equal(state_a[name], state_b[name]), name
        else:
            torch.testing.assert_close(state_a[name], state_b[name], rtol=1e-4, atol=1e-5)
    bounds_a = [s.train_bound for s in result_a.history]
    bounds_b = [s.train_bound for s in result_b.history]
    assert bounds_a == bounds_b if exact else bounds_a == pytest.approx(bounds_b, rel=1e-5)


@pytest.mark.parametrize(
    "objective, num_particles, pair_options",
    [
        ("elbo", 1, {}),  # ReparameterizedELBO
        ("elbo", 3, {}),
        ("iwae", 3, {}),
        ("dreg", 3, {}),
        ("stl", 3, {}),
        ("elbo", 1, {"components": 3}),  # EnumeratedELBO: the mixture component summed out
        ("iwae", 3, {"components": 3}),
        ("elbo", 1, {"batch_norm": True}),  # running statistics updated in place
    ],
)
def test_captured_training_is_the_eager_training_bit_for_bit(
    objective, num_particles, pair_options
):
    eager = train(pair_options, objective=objective, num_particles=num_particles, compile="off")
    captured = train(pair_options, objective=objective, num_particles=num_particles,
                     compile="capture")  # fmt: skip
    assert captured[1].step.startswith("capture: 2 signatures")  # 40 rows: 16, 16 and 8
    assert_same_training(eager, captured)


def test_a_guide_enumerated_latent_on_two_streams_captures_each_stream():
    eager = train_m2(2, objective="iwae", num_particles=2, compile="off")
    captured = train_m2(2, objective="iwae", num_particles=2, compile="capture")
    assert captured[1].step.startswith("capture:")
    for a, b in zip(eager[0].parameters(), captured[0].parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_captured_loss_and_gradients_are_the_eager_ones_on_shared_draws():
    pair = Pair()
    x = data(8)
    pair.model(x)  # registers the parameters
    params = [value.unconstrained() for value in pyro.get_param_store().values()]

    def loss(x):
        return pvae.infer.fast_elbo.ReparameterizedELBO().differentiable_loss(
            pair.model, pair.guide, x
        )

    step = capture_loss(loss, params, (x,))
    torch.manual_seed(4)
    captured_loss, captured_grads = step(x)
    torch.manual_seed(4)
    with pyro.validation_enabled(False):
        eager_loss = loss(x)
    eager_grads = torch.autograd.grad(eager_loss, params)
    assert torch.equal(captured_loss, eager_loss.detach())
    for captured_grad, eager_grad in zip(captured_grads, eager_grads, strict=True):
        assert torch.equal(captured_grad, eager_grad)


def test_tensors_read_by_the_loss_are_inputs_not_constants():
    weight, shift = torch.ones(3, requires_grad=True), torch.zeros(3)
    step = capture_loss(lambda x: ((weight + shift) * x).sum(), [weight], (torch.ones(3),))
    assert step.captured.state == [shift]
    shift.fill_(2.0)  # updated in place between calls, as a schedule or a buffer is
    assert step(torch.ones(3))[0] == 9.0


class DataDependent(Pair):
    """A pair whose model branches in Python on the data's values."""

    def model(self, x):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            logits = self.decoder(z)
            if x.sum() > x.numel() / 2:  # Python that reads the data's values
                logits = -logits
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def test_python_that_reads_data_values_makes_capture_fail_not_freeze():
    with pytest.raises(CaptureFailed, match="data-dependent|DataDependent"):
        capture(lambda x: (x * 2).sum() if x.sum() > 0 else x.sum(), (torch.ones(2),))

    eager = train(compile="off", pair_class=DataDependent)
    with pytest.warns(UserWarning, match="could not be captured.*data-dependent"):
        captured = train(compile="capture", pair_class=DataDependent)
    assert captured[1].step.startswith("eager (the step could not be captured")
    assert_same_training(eager, captured)


def test_a_kl_warm_up_is_an_input_of_the_captured_step(recwarn):
    def run(compile):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pvae.build_vae(X_DIM, z_dim=Z_DIM, hidden_dims=[8], warmup_epochs=3)
        result = pvae.fit(vae.model, vae.guide, data(), num_epochs=4, batch_size=16, seed=2,
                          progress=False, compile=compile,
                          epoch_schedules=[vae.kl_warmup])  # fmt: skip
        return vae, result

    captured = run("capture")
    assert not [w for w in recwarn if "compile" in str(w.message)]
    assert captured[1].step.startswith("capture:")
    eager = run("off")
    for a, b in zip(eager[0].parameters(), captured[0].parameters(), strict=True):
        assert torch.equal(a, b)


class PythonWeight(Pair):
    """A pair whose KL weight is a Python float the user changes: capture cannot see it."""

    weight = 1.0

    def model(self, x):
        with poutine.scale(scale=self.weight):
            super().model(x)


def test_a_python_float_changed_between_epochs_is_caught_at_the_epochs_first_step():
    def run(compile):
        pyro.clear_param_store()
        torch.manual_seed(0)
        pair = PythonWeight()

        def next_weight(stats):
            pair.weight = 1.0 / (stats.epoch + 1)

        result = pvae.fit(pair.model, pair.guide, data(), num_epochs=3, batch_size=20, seed=2,
                          progress=False, compile=compile, on_epoch_end=next_weight)  # fmt: skip
        return pair, result

    eager = run("off")
    with pytest.warns(UserWarning, match="differ from the eager step's.*Python state"):
        captured = run("capture")
    assert captured[1].step.startswith("eager (the captured step's loss")
    # The check ran the eager step on the epoch's first step and kept its numbers: no step
    # trained with the stale weight.
    assert_same_training(eager, captured)


class Counter(Pair):
    """A pair that counts its calls in Python and weighs its likelihood by the count."""

    calls = 0

    def model(self, x):
        self.calls += 1
        with poutine.scale(scale=1.0 + self.calls / 10):
            super().model(x)


def test_a_python_counter_is_caught_at_the_second_replay():
    pyro.clear_param_store()
    pair = Counter()
    with pytest.warns(UserWarning, match="differ from the eager step's"):
        result = pvae.fit(pair.model, pair.guide, data(), num_epochs=1, batch_size=8,
                          progress=False, compile="capture")  # fmt: skip
    assert result.step.startswith("eager")


def test_resuming_a_captured_run_is_bit_exact(tmp_path):
    full = train(num_epochs=3, compile="capture")
    train(num_epochs=1, compile="capture", checkpoint_path=tmp_path / "one.pt")
    resumed = train(num_epochs=3, compile="capture", resume=tmp_path / "one.pt")
    assert_same_training(full, resumed)


def test_auto_compiles_where_the_eager_run_would_take_minutes():
    class Objective:
        def __init__(self, elbo):
            self.elbo = elbo

    ours = [Objective(pvae.infer.fast_elbo.ReparameterizedELBO())]
    pyros = [Objective(pyro.infer.Trace_ELBO())]
    assert choose_backend("auto", ours) == "inductor"
    assert choose_backend("auto", pyros) is None  # NaN checks on the host
    assert choose_backend("off", ours) is None
    assert choose_backend("capture", pyros) == "capture"

    def decide(planned, seconds):
        decision = AutoDecision(planned, agree=lambda flag: flag)
        outcomes = [decision.observe(seconds) for _ in range(6)]
        assert outcomes[:5] == [None] * 5
        return outcomes[5]

    assert decide(10_000, AUTO_SECONDS / 9_000) is True  # 9,994 steps left
    assert decide(10_000, AUTO_SECONDS / 11_000) is False
    short = train(num_epochs=1)[1].step  # the default, on a run of seconds
    assert short == "eager (auto: the run ended before its steps were timed)"
    assert train(num_epochs=3, batch_size=4)[1].step == (
        "eager (auto: the run is too short to repay compiling)"
    )


def test_bad_compile_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="compile must be one of auto, off, capture, inductor"):
        train(num_epochs=1, compile="fast")


def test_pyros_own_estimators_fall_back_to_the_eager_step_with_the_reason():
    class ScoreGuide(Pair):
        def guide(self, x):
            pyro.module("pair", self)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(self.loc(self.encoder(x)), 1.0).to_event(1),
                            infer={"is_auxiliary": False})  # fmt: skip

    pyro.clear_param_store()
    pair = ScoreGuide()
    with pytest.warns(UserWarning, match="could not be captured"):
        result = pvae.fit(pair.model, pair.guide, data(), num_epochs=1, batch_size=8,
                          progress=False, compile="capture", objective="meanfield")  # fmt: skip
    assert result.step.startswith("eager")


def test_inductor_trains_as_the_eager_step_does_to_rounding():
    eager = train(compile="off")
    compiled = train(compile="inductor")
    assert compiled[1].step.startswith("inductor: 2 signatures")
    assert_same_training(eager, compiled, exact=False)
    weight, shift = torch.ones(3, requires_grad=True), torch.zeros(3)
    step = capture_loss(
        lambda x: ((weight + shift) * x).sum(), [weight], (torch.ones(3),), "inductor"
    )
    shift.fill_(2.0)  # not folded into the compiled code
    assert step(torch.ones(3))[0] == 9.0


def test_a_run_resumed_under_auto_takes_the_path_the_run_took(tmp_path, monkeypatch):
    # After the inductor test above: its compiled graphs are this test's (inductor's cache).
    monkeypatch.setattr(captured_steps, "AUTO_SECONDS", 0.0)  # compiles after 6 eager steps
    full = train(num_epochs=3)  # 3 steps an epoch: eager for two epochs, then compiled
    train(num_epochs=2, checkpoint_path=tmp_path / "two.pt")
    assert load_checkpoint(tmp_path / "two.pt")["auto_compile"] == {"compiled": True}
    resumed = train(num_epochs=3, resume=tmp_path / "two.pt")
    assert resumed[1].step.startswith("inductor")  # not six eager steps timed again
    assert_same_training(full, resumed)

    monkeypatch.setattr(captured_steps, "AUTO_SECONDS", math.inf)
    train(num_epochs=2, checkpoint_path=tmp_path / "eager.pt")
    assert train(num_epochs=3, resume=tmp_path / "eager.pt")[1].step == (
        "eager (auto: the run it resumes found it too short to repay compiling)"
    )
    damaged = {**load_checkpoint(tmp_path / "eager.pt"), "auto_compile": {"compiled": "yes"}}
    save_checkpoint(tmp_path / "damaged.pt", damaged)
    with pytest.raises(ValueError, match="auto_compile: its entry 'compiled' must be"):
        train(num_epochs=3, resume=tmp_path / "damaged.pt")


# The README's test command stays under 5 minutes: the other models run with the slow tests.
@pytest.mark.parametrize(
    "model_name",
    ["diagonal", pytest.param("enumerated", marks=pytest.mark.slow),
     pytest.param("positive", marks=pytest.mark.slow)],
)  # fmt: skip
def test_captured_ais_is_the_eager_ais_bit_for_bit(model_name):
    from ais_models import DiagonalLinearGaussian, GammaPoisson
    from test_iwae import EnumeratedMixture

    model = {
        "diagonal": DiagonalLinearGaussian,
        "enumerated": EnumeratedMixture,
        "positive": GammaPoisson,
    }[model_name]()
    if model_name == "positive":
        x = torch.tensor([0.0, 2.0, 7.0, 15.0], dtype=torch.float64)
    else:
        x = model.sample_data(4)
    # Two data chunks, each with its adaptation chains and one group: four captures.
    options = dict(num_steps=8, num_chains=2, data_chunk=2, leapfrog_steps=2, adaptation_chains=1)
    eager = pvae.ais(model.model, model.guide, x, seed=0, compile="off", **options)
    captured = pvae.ais(model.model, model.guide, x, seed=0, compile="capture", **options)
    assert torch.equal(eager.log_weights, captured.log_weights)
    assert torch.equal(eager.acceptance, captured.acceptance)


@pytest.mark.slow
def test_captured_bdmc_is_the_eager_bdmc_bit_for_bit():
    from ais_models import DiagonalLinearGaussian

    model = DiagonalLinearGaussian()
    options = dict(num_data=6, num_steps=10, num_chains=2, leapfrog_steps=3, seed=0)
    eager = pvae.bdmc(model.model, model.guide, model.sample_data(2), compile="off", **options)
    captured = pvae.bdmc(
        model.model, model.guide, model.sample_data(2), compile="capture", **options
    )
    assert torch.equal(eager.lower, captured.lower) and torch.equal(eager.upper, captured.upper)


def test_ais_of_a_model_that_reads_data_values_warns_and_runs_eagerly():
    pyro.clear_param_store()
    pair = DataDependent()
    x = data(6)
    eager = pvae.ais(pair.model, pair.guide, x, num_steps=6, num_chains=2, seed=0, compile="off")
    with pytest.warns(UserWarning, match="leapfrog step could not be captured"):
        captured = pvae.ais(
            pair.model, pair.guide, x, num_steps=6, num_chains=2, seed=0, compile="capture"
        )
    assert torch.equal(eager.log_weights, captured.log_weights)


@pytest.mark.parametrize("pair_options", [{}, {"components": 3}])
def test_captured_log_likelihood_is_the_eager_one(pair_options):
    pair, _ = train(pair_options, num_epochs=1)
    x = data(30)
    options = dict(num_samples=12, particle_chunk=5, data_chunk=20, seed=0)
    eager = pvae.log_likelihood(pair.model, pair.guide, x, compile="off", **options)
    captured = pvae.log_likelihood(pair.model, pair.guide, x, compile="capture", **options)
    assert torch.equal(eager.per_datapoint, captured.per_datapoint)
    assert torch.equal(eager.elbo_per_datapoint, captured.elbo_per_datapoint)


def test_a_guide_enumerated_log_likelihood_is_captured_too():
    m2, _ = train_m2(1)
    x = digits(12, 3)[0]
    eager = pvae.log_likelihood(m2.model, m2.guide, x, 6, seed=0, compile="off")
    captured = pvae.log_likelihood(m2.model, m2.guide, x, 6, seed=0, compile="capture")
    assert torch.equal(eager.per_datapoint, captured.per_datapoint)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", ["capture", "inductor"])
def test_on_a_gpu_the_replayed_step_trains_as_the_eager_one(compile):
    eager = train(compile="off", device="cuda")
    replayed = train(compile=compile, device="cuda")
    assert replayed[1].step.startswith(f"{compile}:")
    assert_same_training(eager, replayed, exact=False)


def test_without_a_working_compiler_inductor_falls_back_to_the_traced_graph(monkeypatch):
    import torch._inductor

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch._inductor, "compile", no_compiler)
    monkeypatch.setattr(pvae.infer.capture, "_COMPILED", {})
    eager = train(compile="off")
    with pytest.warns(UserWarning, match="inductor could not compile.*no C\\+\\+ compiler"):
        replayed = train(compile="inductor")
    assert replayed[1].step.startswith("capture: 2 signatures")
    assert_same_training(eager, replayed)


def test_early_stopping_and_held_out_bounds_are_the_same_on_the_captured_step(tmp_path):
    options = dict(held_out=data(12, seed=5), patience=1, held_out_num_samples=3, num_epochs=6)
    eager = train(compile="off", checkpoint_path=tmp_path / "eager" / "c.pt", **options)
    captured = train(compile="capture", checkpoint_path=tmp_path / "captured" / "c.pt", **options)
    assert_same_training(eager, captured)
    assert (eager[1].best_epoch, eager[1].stopped_early) == (
        captured[1].best_epoch,
        captured[1].stopped_early,
    )
    held_out = [(s.held_out_elbo, s.held_out_iwae) for s in eager[1].history]
    assert held_out == [(s.held_out_elbo, s.held_out_iwae) for s in captured[1].history]
