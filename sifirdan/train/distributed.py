"""Data-parallel training with torch.distributed: one process per device, launched by ``torchrun``.

    torchrun --nproc_per_node=4 -m sifirdan pretrain --data nutuk.txt --out runs/ddp
    torchrun --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \\
             --nproc_per_node=8 -m sifirdan pretrain ...          (and --node_rank=1 on the second machine)

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them we are a single process. Each rank reads its
own data stream, DDP averages gradients across ranks in ``backward()``, rank 0 alone logs and saves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sifirdan.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Read the torchrun environment; a plain ``python -m sifirdan`` gives rank 0 of 1."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    try:
        return DistInfo(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        )
    except ValueError:
        raise UserError("RANK / WORLD_SIZE / LOCAL_RANK must be integers; launch with torchrun") from None


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group: nccl for CUDA, gloo for CPU."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown_distributed(wait_for_others: bool = True) -> None:
    """Leave the process group. After a normal finish, first wait for every rank: a rank that tears down its
    gloo connections while another still talks on them can kill that rank ("terminate called without an
    active exception"). After an error, leave at once: the other ranks may never reach the barrier."""
    if dist.is_available() and dist.is_initialized():
        try:
            if wait_for_others:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if ``flag`` is set on any rank (so all ranks take the same branch and never deadlock)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (a small JSON-like state), in rank order. Uses torch's own in-memory pickling
    between our processes -- never for files."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
