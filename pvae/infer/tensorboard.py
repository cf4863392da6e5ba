"""Per-epoch figures of :func:`pvae.fit` in TensorBoard (the ``tensorboard`` extra)."""

from __future__ import annotations

from pathlib import Path


class TensorBoardLogger:
    """An ``on_epoch_end`` callback that writes each epoch's figures as TensorBoard scalars:
    ``train/bound``, ``held_out/elbo`` (nats per datapoint) and ``epoch/seconds``.

    Example::

        >>> logger = TensorBoardLogger("runs/tb")  # doctest: +SKIP
        >>> pvae.fit(vae.model, vae.guide, x, on_epoch_end=logger)  # doctest: +SKIP
        >>> logger.close()  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install "
                "'pyro-vae[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def __call__(self, stats) -> None:
        self.writer.add_scalar("train/bound", stats.train_bound, stats.epoch)
        if stats.held_out_elbo is not None:
            self.writer.add_scalar("held_out/elbo", stats.held_out_elbo, stats.epoch)
        if stats.held_out_iwae is not None:
            self.writer.add_scalar("held_out/iwae", stats.held_out_iwae, stats.epoch)
        self.writer.add_scalar("epoch/seconds", stats.seconds, stats.epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
