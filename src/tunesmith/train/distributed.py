"""Rank awareness: the same loop runs as one process or under `torchrun` with DDP."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum over ranks (in place for a CPU tensor on gloo; NCCL reduces only GPU tensors, so the value
    travels through the rank's GPU and comes back)."""
    if info.world_size > 1:
        if info.device.type == "cuda" and value.device.type != "cuda":
            on_gpu = value.to(info.device)
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            value.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is True on any rank (a Ctrl-C seen by one rank stops all at the same step)."""
    if info.world_size == 1:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)]), info)[0] > 0)


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
