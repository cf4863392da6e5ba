"""Arithmetic precision of training: exact float32 by default, TF32 or bfloat16 on request.

``"float32"`` makes matrix products and convolutions IEEE float32 while :func:`pvae.fit`
runs (PyTorch's own default lets cuDNN convolutions use TF32); ``"tf32"`` lets both use
TensorFloat-32 on GPUs that have it (Ampere and later; about 10 mantissa bits in the
products, float32 range and accumulation); ``"bfloat16"`` runs model and guide under
``torch.autocast`` with bfloat16, with the log-densities summed in float32. The last two
change the training numbers, not what is being estimated; held-out bounds from
:func:`pvae.log_likelihood` are computed outside of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("float32", "tf32", "bfloat16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Set the float32 precision of CUDA matrix products and cuDNN convolutions, then restore it.

    Example::

        >>> with matmul_precision("tf32"):
        ...     torch.backends.cuda.matmul.fp32_precision
        'tf32'
    """
    check_precision(precision)
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [flag.fp32_precision for flag in flags]
    for flag in flags:
        flag.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    try:
        yield
    finally:
        for flag, value in zip(flags, saved, strict=True):
            flag.fp32_precision = value


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``"bfloat16"``; nothing otherwise.

    Example::

        >>> with autocast("bfloat16", torch.device("cpu")):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
