"""Process groups for ``torchrun``: set-up, ranks, reductions, rank-zero-only side effects.

Launched by ``torchrun`` the environment holds ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup` then joins the process group (NCCL on CUDA, Gloo otherwise) and points
lightning-utilities' :func:`rank_zero_only` at this process's rank, so logging and checkpoint
writing decorated with it run on rank 0 only.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from lightning_utilities.core.rank_zero import rank_zero_only

__all__ = ["all_reduce_max", "all_reduce_mean", "barrier", "is_distributed", "rank", "rank_zero_only", "setup",
           "world_size", "wrap"]

rank_zero_only.rank = int(os.environ.get("RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched with ``WORLD_SIZE > 1``; returns this rank's device.

    On CUDA each process takes the GPU ``LOCAL_RANK``. Without ``WORLD_SIZE`` (or with 1) nothing
    happens and ``device`` is returned as it is.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    rank_zero_only.rank = rank()
    return device


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all ranks (``values`` itself in a single process)."""
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world_size()


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``values`` over all ranks (``values`` itself in a single process)."""
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` in a process group (on its GPU), else itself."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    """Wait until every rank gets here (nothing in a single process)."""
    if is_distributed():
        dist.barrier()
