"""GEGLU with its backward as a Triton kernel (`ldmkit.nn.geglu`).

The kernel runs on the CPU in Triton's interpreter (switched on in conftest.py); each case is
checked against autograd through the plain formula in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import ldmkit.nn.geglu as geglu_module  # noqa: E402
from ldmkit.nn.transformer import FeedForward  # noqa: E402


def _plain(h: torch.Tensor) -> torch.Tensor:
    value, gate = h.chunk(2, dim=-1)
    return value * F.gelu(gate)


def _output_and_grad(fn, h: torch.Tensor, g: torch.Tensor):
    h = h.detach().clone().requires_grad_()
    y = fn(h)
    y.backward(g)
    return y.detach(), h.grad


@pytest.mark.parametrize("shape", [(3, 5, 2 * 40), (7, 2 * 300), (2, 1, 3, 2 * 9)])
def test_backward_kernel_matches_autograd_in_float64(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    h = 2.0 * torch.randn(shape, generator=gen)
    g = torch.randn(shape[:-1] + (shape[-1] // 2,), generator=gen)
    y, dh = _output_and_grad(lambda t: geglu_module.geglu(t, kernel=True), h, g)
    y_ref, dh_ref = _output_and_grad(_plain, h.double(), g.double())
    assert torch.allclose(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    # both halves: the value's gradient is g gelu(gate), the gate's g value gelu'(gate)
    assert torch.allclose(dh.double(), dh_ref, rtol=1e-5, atol=1e-5)


def test_backward_kernel_in_bfloat16_is_within_rounding():
    gen = torch.Generator().manual_seed(0)
    h = (2.0 * torch.randn(64, 2 * 48, generator=gen)).bfloat16()
    g = torch.randn(64, 48, generator=gen).bfloat16()
    _, dh = _output_and_grad(lambda t: geglu_module.geglu(t, kernel=True), h, g)
    _, dh_ref = _output_and_grad(_plain, h.double(), g.double())
    assert dh.dtype == torch.bfloat16
    rel = ((dh.double() - dh_ref).norm() / dh_ref.norm()).item()
    assert rel < 1e-2


def test_kernel_is_not_a_pass_through():
    # the check above must be able to fail: a wrong derivative of gelu is caught
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(4, 2 * 16, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    _, dh_ref = _output_and_grad(_plain, h, g)
    _, dh_wrong = _output_and_grad(lambda t: t.chunk(2, -1)[0] * F.gelu(t.chunk(2, -1)[1], approximate="tanh"), h, g)
    assert not torch.allclose(dh_wrong, dh_ref, rtol=1e-5, atol=1e-5)


def test_feed_forward_gradients_through_the_kernel(monkeypatch):
    torch.manual_seed(0)
    ff = FeedForward(8).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    dy = torch.randn(2, 5, 8, dtype=torch.float64)

    def run(kernel: bool):
        monkeypatch.setattr(geglu_module, "geglu_kernel_enabled", lambda h: kernel)
        ff.zero_grad()
        xi = x.clone().requires_grad_()
        ff(xi).backward(dy)
        return xi.grad, [p.grad.clone() for p in ff.parameters()]

    dx_plain, dp_plain = run(False)
    dx_kernel, dp_kernel = run(True)
    # the kernel computes in float32
    assert torch.allclose(dx_kernel, dx_plain, rtol=1e-5, atol=1e-7)
    for a, b in zip(dp_kernel, dp_plain):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_kernel_path_only_where_gradients_are_recorded_on_cuda():
    h = torch.randn(2, 8, requires_grad=True)
    assert not geglu_module.geglu_kernel_enabled(h)  # CPU
    with torch.no_grad():
        assert not geglu_module.geglu_kernel_enabled(h)
