"""GradientMean's packing: every gradient layout comes back in place, each element its own mean.

One gloo process stands in for the group while the trainer is told there are two ranks, so the
all-reduce is the identity and the mean halves every gradient: any element packed into the wrong
place, or a copy written back to a temporary instead of the gradient, shows. That two real ranks
train as one process does is test_ddp.py's check.
"""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as torch_dist

from ldmkit.train.distributed import DistInfo
from ldmkit.train.grad_sync import GradientMean, _memory_order


@pytest.fixture
def one_process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    torch_dist.destroy_process_group()


def _param_with_grad(grad: torch.Tensor) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    p.grad = grad
    return p


def test_each_layout_is_averaged_in_place(one_process_group):
    gen = torch.Generator().manual_seed(0)
    grads = {
        "contiguous": torch.randn(5, 3, generator=gen),
        "channels_last": torch.randn(4, 3, 2, 5, generator=gen).to(memory_format=torch.channels_last),
        "transposed": torch.randn(6, 4, generator=gen).t(),  # neither layout: packed by copy
        "vector": torch.randn(7, generator=gen),
    }
    expected = {k: g.clone() / 2 for k, g in grads.items()}
    addresses = {k: g.data_ptr() for k, g in grads.items()}
    params = [_param_with_grad(g) for g in grads.values()]
    no_grad = torch.nn.Parameter(torch.ones(3))  # skipped, as a parameter without a gradient
    dist = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))

    GradientMean([*params, no_grad], dist).mean()

    for (name, want), p in zip(expected.items(), params):
        assert p.grad.data_ptr() == addresses[name], name  # in place
        assert p.grad.stride() == grads[name].stride(), name
        assert torch.equal(p.grad, want), name
    assert no_grad.grad is None


def test_memory_order_views_share_the_gradient_storage():
    x = torch.arange(24.0).reshape(2, 3, 2, 2).to(memory_format=torch.channels_last)
    view = _memory_order(x)
    assert view.data_ptr() == x.data_ptr()
    assert view.tolist() == x.permute(0, 2, 3, 1).flatten().tolist()
    assert _memory_order(torch.zeros(4, 3).t()) is None


def test_one_process_is_left_alone():
    grad = torch.ones(3)
    p = _param_with_grad(grad)
    GradientMean([p], DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))).mean()
    assert torch.equal(p.grad, torch.ones(3))
