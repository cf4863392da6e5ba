"""Data-parallel training and evaluation with ``torch.distributed`` (torchrun; NCCL or gloo).

Every process holds the whole model and the whole dataset and works on its shard of each
global minibatch; gradients are summed across processes after every step, so parameters stay
identical everywhere and equal those of one process with the same global batch.
"""

from __future__ import annotations

import dataclasses
import io
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes logs, checkpoints and pictures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global minibatch (possibly empty at the tail)."""
        return indices.tensor_split(self.world_size)[self.rank] if self.active else indices

    def rows(self, num_rows: int, multiple: int = 1) -> tuple[int, int]:
        """Start and end of this rank's contiguous share of ``num_rows`` rows, cut at
        multiples of ``multiple`` (the last rank takes the rest)."""
        blocks = -(-num_rows // multiple)
        start = min(blocks * self.rank // self.world_size * multiple, num_rows)
        end = min(blocks * (self.rank + 1) // self.world_size * multiple, num_rows)
        return start, end

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes, in place."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, params: list[torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of ``params`` and the 1-element ``extra`` in one all-reduce.

        ``extra`` carries per-step flags (a stop request) at no extra collective. Returns the
        summed ``extra``.
        """
        if not self.active:
            return extra
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [extra.to(grads[0].dtype)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            param.grad = flat[offset : offset + grad.numel()].view_as(grad)
            offset += grad.numel()
        return flat[offset:]

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. until rank 0 has written a file)."""
        if self.active:
            dist.barrier()

    def broadcast_(self, tensors) -> None:
        """Overwrite ``tensors`` on every rank with rank 0's values."""
        if self.active:
            with torch.no_grad():
                for tensor in tensors:
                    dist.broadcast(tensor, src=0)

    def broadcast_int(self, value: int, device: torch.device) -> int:
        if not self.active:
            return value
        holder = torch.tensor([value], dtype=torch.int64, device=device)
        dist.broadcast(holder, src=0)
        return int(holder.item())

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        # all_gather_object cannot pickle tensors' storages here: send torch.save bytes, and
        # read them back with weights_only, as any checkpoint.
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, buffer.getvalue())
        return [torch.load(io.BytesIO(data), weights_only=True) for data in gathered]


def torchrun_environment() -> bool:
    """True inside a launcher (torchrun) that started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def disconnect() -> None:
    """Leave the process group, if this process joined one: to be called before exiting.

    Left to the interpreter's exit, gloo's communication threads can be torn down while
    still running, and the process aborts ("terminate called without an active exception").

    Example::

        >>> disconnect()  # nothing to do outside torchrun
    """
    if dist.is_available() and dist.is_initialized():
        # Together: a rank that tears gloo down while its peer still sends aborts the peer
        # ("terminate called without an active exception"), as one in eight runs under load did.
        dist.barrier()
        dist.destroy_process_group()


def connect(device: torch.device, distributed: bool | None = None) -> Cluster:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU).

    ``distributed=None`` joins only when launched by torchrun with several processes.

    Example::

        >>> connect(torch.device("cpu"), distributed=False)
        Cluster(rank=0, world_size=1)
    """
    if distributed is None:
        distributed = torchrun_environment() or (dist.is_available() and dist.is_initialized())
    if not distributed:
        return Cluster()
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed: train without it")
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ValueError(
                "distributed training needs a launcher: start the script with torchrun, e.g. "
                "`torchrun --nproc_per_node=2 examples/mnist_svi.py --device cpu`"
            )
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Cluster(dist.get_rank(), dist.get_world_size())
