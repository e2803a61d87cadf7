"""Everything the trainer knows about processes: one module, torchrun's environment.

`torchrun --nproc_per_node=N -m ldmkit.cli train ...` sets RANK, LOCAL_RANK and WORLD_SIZE;
without them the same code runs as one process (nanoGPT's `ddp = int(os.environ.get("RANK",
-1)) != -1`). Multi-node is the same command with torchrun's node flags. NCCL is used on
CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ldmkit.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: `rank` of `world_size`, on `device`."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, saves and samples; the others only train."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one; else describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and dev.type == "cuda":
        # Under torchrun each process owns the GPU of its local rank; a fixed index such as
        # "cuda:0" would pile every rank onto one card.
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python and torch (all devices) differently on each rank.

    Per-rank seeds keep things like dropout independent across ranks; the trainer draws the
    noise, timesteps and data order from its own generators, which are identical on all
    ranks so that a global batch is the same whatever the number of processes.
    """
    random.seed(seed + rank)
    torch.manual_seed(seed + rank)  # also seeds every CUDA device


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of `tensor` over ranks (a new tensor; the input is left as it was)."""
    if not info.distributed:
        return tensor.clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `tensor` over ranks (a new tensor)."""
    out = tensor.detach().clone()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's `obj` on every rank (pickled in memory between our own processes only)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(finished: bool = False) -> None:
    """Leave the process group (safe to call when there is none). `finished`: every rank got here
    the same way, so they first wait for each other: a rank that tore down its connections and
    exited while another was still in the last collective made that one abort at its exit
    ("terminate called without an active exception", 1 run in ~15 of a two-rank test)."""
    if dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


# What a collective raises when another process of the job died (killed, out of memory, its own
# error): gloo's transport ("[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer") and
# torch's DistError family (NCCL, the store). Each surviving rank printed ~35 lines of it.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo/transport")


def lost_another_process(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another process of a torchrun job is gone."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(sign in str(err) for sign in _PEER_GONE)
