"""Binarization for the Bernoulli likelihood, as in the IWAE protocol (Burda et al., 2016).

Training images are re-binarized at every minibatch (:class:`DynamicBinarization`, a data
augmentation that curbs over-fitting), held-out images once with a fixed seed
(:func:`binarize`), so that held-out bounds are those of one fixed binary test set.
"""

from __future__ import annotations

import torch

# Held-out images are binarized once with this seed, whatever the training seed, so that
# every run and every `pvae evaluate` scores the same binary held-out set.
HELD_OUT_SEED = 0


def holds_bytes(x: torch.Tensor) -> bool:
    """Whether ``x`` holds 8-bit values that pvae scales to [0, 1] (``x / 255``): ``uint8``
    with a value above 1. A ``uint8`` table of 0s and 1s is binary data as it is, and other
    integer dtypes are counts or 0/1 tables, never bytes.

    Example::

        >>> holds_bytes(torch.tensor([0, 255], dtype=torch.uint8)), holds_bytes(torch.ones(2))
        (True, False)
    """
    return x.dtype == torch.uint8 and bool((x > 1).any())


def _check_unit_interval(x: torch.Tensor) -> None:
    low, high = x.min().item(), x.max().item()  # bools compare as 0 and 1
    if low < 0 or high > 1:
        raise ValueError(
            f"binarization needs grey levels in [0, 1], got values in [{low:g}, {high:g}]: "
            "divide 8-bit images by 255 first"
        )


def _probabilities(x: torch.Tensor) -> torch.Tensor:
    # torch draws Bernoulli numbers from floating probabilities only: a bool or 0/1 integer
    # table (checked in [0, 1]) is one, in torch's default dtype; the model's comes after.
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def binarize(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Draw binary images with pixel probabilities ``x`` (in [0, 1]); fixed when ``seed`` is set.

    Example::

        >>> binarize(torch.tensor([[0.0, 1.0, 0.5]]), seed=0).shape
        torch.Size([1, 3])
        >>> binarize(torch.tensor([[False, True]])).tolist()  # bools and 0/1 integers too
        [[0.0, 1.0]]
    """
    _check_unit_interval(x)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(_probabilities(x), generator=generator)


class DynamicBinarization:
    """A ``transform`` for :func:`pvae.fit`: re-binarize every minibatch on its own device.

    ``fit`` calls ``check_data`` once on the whole dataset; the per-batch call does no
    checks, so the training loop never waits for the host.

    Example::

        >>> transform = DynamicBinarization()
        >>> transform(torch.full((2, 3), 0.5)).unique().tolist() in ([0.0, 1.0], [0.0], [1.0])
        True
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(_probabilities(x))

    def check_data(self, x: torch.Tensor) -> None:
        _check_unit_interval(x)

    def __repr__(self) -> str:
        return "DynamicBinarization()"


# How a likelihood wants its data: "as_given" (nothing to do) or "binarized" (grey levels in
# [0, 1] drawn to 0/1: afresh in every training minibatch, once with HELD_OUT_SEED for
# held-out data). A likelihood states its form (``data_form``); this module does it.
DATA_FORMS = ("as_given", "binarized")


def _check_form(form: str) -> None:
    if form not in DATA_FORMS:
        raise ValueError(f"unknown data form {form!r}: choose one of {', '.join(DATA_FORMS)}")


def train_transform(form: str = "as_given") -> DynamicBinarization | None:
    """The ``transform`` :func:`pvae.fit` applies to training minibatches of this form.

    Example::

        >>> train_transform("binarized")
        DynamicBinarization()
    """
    _check_form(form)
    return DynamicBinarization() if form == "binarized" else None


def held_out_data(x: torch.Tensor, form: str = "as_given") -> torch.Tensor:
    """Held-out data of this form, fixed so that every run and `pvae evaluate` score the same.

    Example::

        >>> held_out_data(torch.tensor([[0.2, 0.9]]), "binarized").tolist()
        [[0.0, 1.0]]
    """
    _check_form(form)
    return binarize(x, seed=HELD_OUT_SEED) if form == "binarized" else x
