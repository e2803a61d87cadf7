"""The mean of every rank's gradients as one all-reduce: data parallelism under torchrun.

Both stages, under torchrun, average their gradients with `GradientMean` after the backward:
the gradients are packed into one flat fp32 buffer, summed over the ranks by one all-reduce,
divided by the number of ranks and unpacked. The result is DDP's (the mean over ranks of each
rank's gradient of its own mean loss: the gradient of the global batch's mean loss), and it is
the same few kernels every step, so a whole-step CUDA graph (step_graph.py) records it with the
rest of the step (NCCL collectives can be captured since NCCL 2.9).

Why not DDP, which the design first named: (1) DDP launches its all-reduces from autograd hooks
as its buckets fill and keeps host state between iterations, so capturing it takes PyTorch's
special recipe (DDP built on a side stream, 11 warm-up iterations); (2) measured on two H200s
(benchmarks/NOTES.md v17), DDP around the compiled model was slow: its step took 102 ms for the
emoji UNet (global batch 256), 139 ms for the base UNet (one H200 alone, v16: 38 ms) and 39 ms
for the emoji VAE, against 5.7, 26.0 and 3.8 ms with this all-reduce inside the captured step.
(A graph compiled under DDP is split by dynamo at DDP's bucket boundaries, its "DDPOptimizer";
how much of the cost that is was not measured.)

What it gives up is DDP's overlap of communication with the backward. The all-reduce is of the
parameters' size: the 90M-parameter base UNet's 360 MB at the ~330 GB/s an all-reduce reached
between two H100s here (the device tool's KINDS.md) is ~1 ms against a ~26 ms step.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as torch_dist

from ldmkit.train.distributed import DistInfo


def _memory_order(t: torch.Tensor) -> torch.Tensor | None:
    """`t`'s elements as a 1-D view in the order its memory holds them (contiguous or
    channels_last, the layouts gradients take here); None for any other layout."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


class GradientMean:
    """`mean()`: replace each parameter's gradient by its mean over the ranks, in place.

    Every rank must call it at the same point of its step, with the same parameters holding
    gradients (the same model and the same kind of batch on every rank, as `ldm train` has).
    `broadcast_parameters()` gives every rank rank 0's weights (as DDP does when it is built):
    call it once the weights are initialised or loaded.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], dist: DistInfo) -> None:
        self.params = list(params)
        self.dist = dist

    def broadcast_parameters(self) -> None:
        with torch.no_grad():
            for p in self.params:
                torch_dist.broadcast(p.data, src=0)

    def mean(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads or not self.dist.distributed:
            return
        views = [_memory_order(g) for g in grads]
        # views where the layout allows (no copy); a copy in logical order otherwise
        flat = torch.cat([v if v is not None else g.reshape(-1) for v, g in zip(views, grads)]).float()
        torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
        flat.div_(self.dist.world_size)
        chunks = flat.split([g.numel() for g in grads])
        in_place = [(v, c) for v, c in zip(views, chunks) if v is not None]
        if in_place:
            torch._foreach_copy_([v for v, _ in in_place], [c for _, c in in_place])
        for v, c, g in zip(views, chunks, grads):
            if v is None:
                g.copy_(c.view(g.shape))
