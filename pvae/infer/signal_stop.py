"""How SIGINT and SIGTERM stop :func:`pvae.fit`: after the current step, with a checkpoint."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from pvae.infer.distributed import Cluster

# With several processes, how often (in steps) they read their summed stop flags.
_CHECK_EVERY = 10


class SignalStop:
    """While active, SIGINT and SIGTERM only ask training to stop after the current step.

    A second SIGINT interrupts at once (for a run that does not stop). Handlers are
    installed only in the main thread, where Python delivers signals, and are restored on
    exit.

    Example::

        >>> with SignalStop() as stop_requests:
        ...     stop_requests.received is None
        True
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @property
    def signal(self) -> int:
        """The signal that stopped training (SIGTERM when another rank received it)."""
        return self.received or signal.SIGTERM

    def agreed(self, summed_flags: torch.Tensor, cluster: Cluster, num_steps: int) -> bool:
        """Whether to stop after this step. Alone, as soon as a signal came; with several
        processes, all decide together from the summed flags, every few steps so that the
        check costs no host sync on the others."""
        if not cluster.active:
            return self.received is not None
        return num_steps % _CHECK_EVERY == 0 and bool(summed_flags.item() > 0)
