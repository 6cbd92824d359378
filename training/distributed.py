"""Small helpers for multi-GPU training with ``torchrun`` (PyTorch DDP); single-process runs need nothing.

``torchrun --nproc_per_node=N training/train.py ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
without them everything here degrades to rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "all_reduce_mean", "barrier", "init_distributed", "is_main_process"]


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group when launched by torchrun (NCCL on CUDA, Gloo on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext()
    context = DistributedContext(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    # Rank 0 evaluates alone while the others wait in a collective: allow for a slow VOC07-test pass.
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return context


def is_main_process() -> bool:
    """True unless this is a non-zero rank (of the process group, or as torchrun set ``RANK`` before/after it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (in place; a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
