"""Minibatches for :func:`pvae.fit`: rows of data on the training device, or copied from the host.

Data that fit on the training device are indexed there: a minibatch costs one gather.
Data kept in host memory (larger than the GPU's, say) are gathered on the host into a pinned
buffer and copied to the device without blocking, on a CUDA stream of their own, so that the
copy of the next minibatch runs while the GPU computes the current step.
"""

from __future__ import annotations

import contextlib

import torch


class DeviceBatches:
    """Minibatches of tensors that already live on the training device.

    Example::

        >>> batches = DeviceBatches((torch.arange(6.0).reshape(3, 2),))
        >>> batches.get(torch.tensor([2, 0]))
        (tensor([[4., 5.],
                [0., 1.]]),)
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...]):
        self.tensors = tensors

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[indices] for t in self.tensors)

    def prefetch(self, indices: torch.Tensor) -> None:
        """Nothing to do ahead of time: indexing on the device is one kernel."""


class HostBatches:
    """Minibatches copied from host memory to ``device``, the next one while a step runs.

    On CUDA the data are pinned once (unless they already are), each minibatch is gathered
    into one of two pinned buffers (double buffering: a buffer is refilled only after its
    previous copy finished) and copied with ``non_blocking=True`` on a side stream; the
    compute stream waits for that copy only when it needs the batch. On another device the
    same path runs synchronously. Indices are CPU tensors.

    Example::

        >>> batches = HostBatches((torch.arange(6.0).reshape(3, 2),), torch.device("cpu"), 2)
        >>> batches.prefetch(torch.tensor([1, 2]))
        >>> batches.get(torch.tensor([1, 2]))
        (tensor([[2., 3.],
                [4., 5.]]),)
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], device: torch.device, max_rows: int):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            tensors = tuple(t if t.is_pinned() else t.pin_memory() for t in tensors)
        self.tensors = tensors
        rows = min(max_rows, tensors[0].shape[0])
        self._buffers = [
            tuple(
                torch.empty((rows, *t.shape[1:]), dtype=t.dtype, device="cpu", pin_memory=self.cuda)
                for t in tensors
            )
            for _ in range(2)
        ]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._slot = 0
        self._stream = torch.cuda.Stream(device) if self.cuda else None
        self._pending: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def prefetch(self, indices: torch.Tensor) -> None:
        """Start copying the rows ``indices`` to the device; :meth:`get` picks them up."""
        self._pending = (indices, self._copy(indices)) if indices.numel() else None

    def get(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows ``indices`` on the device, from the prefetch when it was for them."""
        pending, self._pending = self._pending, None
        if pending is not None and torch.equal(pending[0], indices):
            batch = pending[1]
        else:
            batch = self._copy(indices)
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._stream)
            for tensor in batch:
                # Allocated on the side stream, used on the compute stream: the caching
                # allocator must not hand the memory out again before the step is done.
                tensor.record_stream(compute)
        return batch

    def _copy(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = indices.numel()
        if rows > self._buffers[0][0].shape[0]:
            raise ValueError(
                f"{rows} rows asked for, but the buffers hold {self._buffers[0][0].shape[0]}"
            )
        slot, self._slot = self._slot, 1 - self._slot
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # its last copy has left the buffer
        host = tuple(
            torch.index_select(t, 0, indices, out=buffer[:rows])
            for t, buffer in zip(self.tensors, self._buffers[slot], strict=True)
        )
        stream = torch.cuda.stream(self._stream) if self.cuda else contextlib.nullcontext()
        with stream:
            moved = tuple(h.to(self.device, non_blocking=True, copy=True) for h in host)
            if self.cuda:
                self._copied[slot] = torch.cuda.Event()
                self._copied[slot].record(self._stream)
        return moved
