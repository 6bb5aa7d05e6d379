"""Training under torchrun: the process group, this process's rank, and the two collectives the loop
needs (a mean over ranks, an "any rank" vote). Single-process runs never touch torch.distributed."""

from __future__ import annotations

import os

import torch


def dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int, int]:
    """Initialise torch.distributed when launched by torchrun. Returns (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def all_ranks_mean(value: float, world: int) -> float:
    """The mean of ``value`` over all ``world`` ranks (``value`` itself in a single process)."""
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank when ``flag`` is true on any (ranks stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
