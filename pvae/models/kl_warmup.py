"""The KL weight of a beta-VAE as training state: a schedule that :func:`pvae.fit` drives.

The weight warms up linearly from beta / warmup_epochs to beta over the first
``warmup_epochs`` epochs (Bowman et al., CoNLL 2016; Sønderby et al., "Ladder VAE",
NeurIPS 2016). ``fit(..., epoch_schedules=[vae.kl_warmup])`` sets the epoch before each
epoch, a resumed run too (the epoch is in the checkpoint), so no caller keeps it by hand.
"""

from __future__ import annotations

import torch

from pvae.errors import ModelError


class KLWarmup:
    """The weight of KL(q || p) at the current epoch: ``beta``, after the warm-up.

    Example::

        >>> warmup = KLWarmup(beta=2.0, warmup_epochs=4)
        >>> warmup.set_epoch(1)
        >>> warmup.weight
        1.0
    """

    def __init__(self, beta: float = 1.0, warmup_epochs: int = 0):
        self.beta, self.warmup_epochs = float(beta), warmup_epochs
        self.completed_epochs: int | None = None  # None: nobody has driven the warm-up
        self._tensors: dict[torch.device, torch.Tensor] = {}

    def set_epoch(self, completed_epochs: int) -> None:
        """Called by :func:`pvae.fit` before each epoch with the epochs completed so far."""
        self.completed_epochs = completed_epochs
        for tensor in self._tensors.values():
            tensor.fill_(self.weight)

    def weight_tensor(self, device: torch.device) -> torch.Tensor:
        """The weight as a 0-dimensional tensor on ``device``, the same tensor at every call
        and updated in place by :meth:`set_epoch`: a step captured by ``fit(compile=...)``
        reads it as an input instead of freezing the weight it saw.

        Example::

            >>> warmup = KLWarmup(beta=2.0, warmup_epochs=2)
            >>> weight = warmup.weight_tensor(torch.device("cpu"))
            >>> warmup.set_epoch(1)
            >>> weight
            tensor(2.)
        """
        device = torch.device(device)
        tensor = self._tensors.get(device)
        if tensor is None:
            tensor = self._tensors[device] = torch.tensor(self.weight, device=device)
        return tensor

    @property
    def weight(self) -> float:
        if self.warmup_epochs == 0:
            return self.beta
        epochs = self.completed_epochs or 0
        return self.beta * min(1.0, (epochs + 1) / self.warmup_epochs)

    def check_driven(self) -> None:
        """Refuse to train a warm-up that nothing advances (it would stay at its first weight)."""
        if self.warmup_epochs and self.completed_epochs is None:
            raise ModelError(
                f"this VAE warms its KL weight up over {self.warmup_epochs} epochs, but nothing "
                "tells it the epoch: pass epoch_schedules=[vae.kl_warmup] to pvae.fit (in a loop "
                "of your own, call vae.kl_warmup.set_epoch(epoch) before each epoch)"
            )

    def __repr__(self) -> str:
        return f"KLWarmup(beta={self.beta:g}, warmup_epochs={self.warmup_epochs})"
