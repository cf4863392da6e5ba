"""Pyro's semi-supervised VAE example (Kingma et al. 2014, M2), re-implemented as published.

The reference is ``examples/vae/ss_vae_M2.py`` of pyro-ppl/pyro (with its
``utils/custom_mlp.py`` and ``utils/mnist_cached.py``; read at commit ff6ae1c, Oct 2024),
run as its EXAMPLE_RUN line runs it (``--aux-loss -alm 46 -enum parallel -zd 50 -hl 500
-lr 0.00042 -bs 200``), written anew here with plain ``pyro.infer.SVI`` and no pvae code in
training. Kept as published:

- networks: encoder_y x → 500 → softmax over 10 labels; encoder_z [x, y] → 500 → (loc,
  exp(log-scale)) of a 50-d z; decoder [z, y] → 500 → sigmoid pixel probabilities; softplus
  hidden layers, hidden layers initialized N(0, 0.001) (weights and biases) as their MLP does,
  output layers with torch's default initialization;
- model: z ~ N(0, I), y ~ OneHotCategorical(uniform), x ~ Bernoulli(decoder(z, y)) with
  ``validate_args=False``: the example trains on grey levels (pixels / 255, not binarized),
  and so does this; guide: q(y | x) = encoder_y, q(z | x, y) = encoder_z, y enumerated in
  parallel by ``config_enumerate(expand=True)`` when unlabelled; every site in an unsized
  ``pyro.plate("data")``; the guide registers no module (the model's ``pyro.module`` holds
  all three networks);
- objective: ``TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)`` and,
  with the same optimizer, ``Trace_ELBO`` on model_classify/guide_classify (the labelled
  log q(y | x) scaled by 46), both stepped on every minibatch, the second a no-op on
  unlabelled ones; Pyro's Adam, lr 0.00042, betas (0.9, 0.999) (the argparse defaults; the
  EXAMPLE_RUN line passes ``-b1 0.95``), batch 200, shuffled each epoch, last batch kept;
- schedule (run_inference_for_epoch): an epoch is every labelled and every unlabelled
  minibatch once; batch i is labelled when i % int(N / n_labelled) == 1 and labelled batches
  remain, N being all training digits (50,000 there).

Deliberate differences:

- data come as tensors (labels as integers, made one-hot here), not from MNISTCached: the
  caller chooses the labelled digits (the example takes sup_num / 10 of each class) and
  nothing is held out for validation; the example's per-epoch validation/test accuracies
  are logs, not used in training, and are left out;
- where that rule cannot place every labelled batch (the example asserts its sizes so that
  it can; otherwise it would run out of unlabelled batches mid-epoch) a ValueError is raised;
- softmax over the last dimension instead of dim=1: the same for [batch, 784] inputs, and
  right for inputs with more leading dimensions; encoder_z's two heads (loc, log-scale) as
  one linear layer of 2 × z_dim outputs: the same parameters and initialization;
- x is scored as given (the example's grey levels, or binary digits if the caller binarizes);
- ``classifier`` returns integer labels, not one-hots; ``pyro.module`` is named
  "pyro_ss_vae" (not "ss_vae"), so that other models in the process keep their parameters;
- ``seconds=`` stops training after the minibatch that crosses the budget (wall-clock, or
  ``clock=time.process_time``: CPU time);
- ``expand_enumeration = False`` enumerates y unexpanded: the same bound, the same numbers
  (a test checks pvae's held-out bounds on both; this model found pvae's handling of an
  expanded enumerated y and of an unsized data plate wrong, since fixed).
"""

from __future__ import annotations

import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

NUM_LABELS, BETAS = 10, (0.9, 0.999)


def _mlp(fan_in: int, hidden: int, fan_out: int) -> nn.Sequential:
    """Linear → softplus → linear, the hidden layer initialized N(0, 0.001) as custom_mlp's."""
    linear = nn.Linear(fan_in, hidden)
    nn.init.normal_(linear.weight, 0, 0.001)
    nn.init.normal_(linear.bias, 0, 0.001)
    return nn.Sequential(linear, nn.Softplus(), nn.Linear(hidden, fan_out))


def _concat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dimension, broadcasting the others (enumerated y)."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], dim=-1)


class SSVAE(nn.Module):
    """The example's M2 networks, model, enumerated guide and auxiliary classification loss."""

    def __init__(self, z_dim=50, hidden=500, aux_loss_multiplier=46.0, input_size=784):
        super().__init__()
        self.z_dim, self.aux_loss_multiplier = z_dim, aux_loss_multiplier
        self.encoder_y = nn.Sequential(_mlp(input_size, hidden, NUM_LABELS), nn.Softmax(dim=-1))
        self.encoder_z_body = _mlp(input_size + NUM_LABELS, hidden, 2 * z_dim)
        self.decoder = nn.Sequential(_mlp(z_dim + NUM_LABELS, hidden, input_size), nn.Sigmoid())
        # False enumerates y unexpanded: the same bound, and what pvae.log_likelihood needs
        # for more than 10 datapoints (it mis-handles y's expanded values: see the tests).
        self.expand_enumeration = True
        self.epochs_done = self.steps_done = self.supervised_steps = 0
        self.train_seconds = 0.0

    def encoder_z(self, xs, ys):
        # One linear layer of 2 * z_dim outputs is the example's two z_dim heads side by side.
        loc, log_scale = self.encoder_z_body(_concat(xs, ys)).split(self.z_dim, dim=-1)
        return loc, log_scale.exp()

    def model(self, xs, ys=None):
        pyro.module("pyro_ss_vae", self)
        batch, options = xs.shape[0], {"dtype": xs.dtype, "device": xs.device}
        with pyro.plate("data"):
            prior = dist.Normal(torch.zeros(batch, self.z_dim, **options), 1.0)
            zs = pyro.sample("z", prior.to_event(1))
            label_prior = torch.full((batch, NUM_LABELS), 1.0 / NUM_LABELS, **options)
            ys = pyro.sample("y", dist.OneHotCategorical(label_prior), obs=ys)
            probs = self.decoder(_concat(zs, ys))
            # Grey levels are scored as the example scores them: no support check.
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=xs)
            return probs

    def _guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            pyro.sample("z", dist.Normal(*self.encoder_z(xs, ys)).to_event(1))

    def guide(self, xs, ys=None):
        """q(y | x) q(z | x, y), y enumerated in parallel (expanded) when not observed."""
        return config_enumerate(self._guide, "parallel", expand=self.expand_enumeration)(xs, ys)

    def model_classify(self, xs, ys=None):
        """The auxiliary loss: aux_loss_multiplier × -log q(y | x) of labelled digits."""
        pyro.module("pyro_ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                with pyro.poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass

    def classifier(self, xs) -> torch.Tensor:
        """The most probable label under q(y | x), as integers."""
        return self.encoder_y(xs).argmax(-1)


def supervised_schedule(num_labelled: int, num_unlabelled: int, batch_size: int) -> list[bool]:
    """Which minibatches of an epoch are labelled: run_inference_for_epoch's rule."""
    sup_batches = -(-num_labelled // batch_size)
    total = sup_batches + -(-num_unlabelled // batch_size)
    interval = int((num_labelled + num_unlabelled) / num_labelled)
    schedule, placed = [], 0
    for i in range(total):
        schedule.append(i % interval == 1 and placed < sup_batches)
        placed += schedule[-1]
    if placed < sup_batches:
        raise ValueError(
            f"the example's schedule places {placed} of {sup_batches} labelled batches "
            f"(every {interval}th of {total}): too large a labelled share for it"
        )
    return schedule


def train_pyro_ss_vae(
    x_labelled,
    y_labelled,
    x_unlabelled,
    *,
    seconds=None,
    num_epochs=None,
    seed=0,
    batch_size=200,
    learning_rate=0.00042,
    aux_loss_multiplier=46.0,
    z_dim=50,
    hidden=500,
    clock=time.perf_counter,
) -> SSVAE:
    """Train the example's SSVAE for ``num_epochs`` epochs or ``seconds`` of ``clock`` (wall
    time; ``time.process_time`` counts this process's CPU time, robust to a busy machine).

    Returns it with ``epochs_done`` (whole epochs), ``steps_done`` (minibatches, each one
    step of both losses), ``supervised_steps`` and ``train_seconds`` set.
    """
    if (seconds is None) == (num_epochs is None):
        raise ValueError("give exactly one of seconds and num_epochs")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    schedule = supervised_schedule(len(x_labelled), len(x_unlabelled), batch_size)
    ys = nn.functional.one_hot(y_labelled.long(), NUM_LABELS).to(x_labelled.dtype)
    ssvae = SSVAE(z_dim, hidden, aux_loss_multiplier, x_labelled.shape[1])
    optimizer = Adam({"lr": learning_rate, "betas": BETAS})
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    losses = [
        SVI(ssvae.model, ssvae.guide, optimizer, loss=elbo),
        SVI(ssvae.model_classify, ssvae.guide_classify, optimizer, loss=Trace_ELBO()),
    ]
    loaders = [
        torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)
        for data in (
            torch.utils.data.TensorDataset(x_labelled, ys),
            torch.utils.data.TensorDataset(x_unlabelled),
        )
    ]
    started = clock()
    while num_epochs is None or ssvae.epochs_done < num_epochs:
        labelled, unlabelled = (iter(loader) for loader in loaders)
        for is_supervised in schedule:
            batch = next(labelled) if is_supervised else next(unlabelled)
            for loss in losses:
                loss.step(*batch)
            ssvae.steps_done += 1
            ssvae.supervised_steps += is_supervised
            ssvae.train_seconds = clock() - started
            if seconds is not None and ssvae.train_seconds >= seconds:
                # Whole epochs: the one this step ended counts too.
                ssvae.epochs_done = ssvae.steps_done // len(schedule)
                return ssvae
        ssvae.epochs_done += 1
    return ssvae
