"""The attention operator pair of compiled CUDA training (`ldmkit.nn.attention_op`).

cuDNN's kernels need a GPU; here they refuse, and the operators' reference takes over (the same
contract: the output and the rows' log-sum-exp forward, the gradients from them backward, by
FlashAttention's identities). What is checked is the operators' own work: the per-head views in
and out, the fallback, what is saved, the gradients' routing, and a compiled graph through
them, against autograd through plain attention in float64. The GPU check of the cuDNN pair
against SDPA is `benchmarks/transformer_block_probe.py` (NOTES v12: identical outputs).
"""

from __future__ import annotations

import pytest
import torch

import ldmkit.nn.attention_op as op
from ldmkit.nn.attention import multi_head_attention


@pytest.fixture
def reference_backend(monkeypatch):
    # cuDNN's kernels refuse (as they would a shape they have no plan for): the reference runs
    def refuse(*args):
        raise RuntimeError("no cuDNN here")

    monkeypatch.setattr(op, "_cudnn_forward", refuse)
    monkeypatch.setattr(op, "_cudnn_backward", refuse)


def _plain(q, k, v, heads):
    return multi_head_attention(q, k, v, heads)  # off CUDA: SDPA on per-head views


def _grads(fn, q, k, v, g):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(g)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("n,m,heads,d", [(12, 12, 2, 8), (10, 7, 3, 16)])
def test_operator_pair_matches_attention_in_float64(reference_backend, n, m, heads, d):
    gen = torch.Generator().manual_seed(n * m + heads)
    q = torch.randn(2, n, heads * d, generator=gen, dtype=torch.float64)
    k = torch.randn(2, m, heads * d, generator=gen, dtype=torch.float64)
    v = torch.randn(2, m, heads * d, generator=gen, dtype=torch.float64)
    g = torch.randn(2, n, heads * d, generator=gen, dtype=torch.float64)
    got = _grads(lambda *t: op.attention(*t, heads), q, k, v, g)
    want = _grads(lambda *t: _plain(*t, heads), q, k, v, g)
    for a, b in zip(got, want):  # (the log-sum-exp is float32, as cuDNN's)
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_heads_are_not_mixed_up(reference_backend):
    # the same tensors split into other heads are another function: the check above can fail
    gen = torch.Generator().manual_seed(3)
    q, k, v, g = (torch.randn(1, 6, 16, generator=gen, dtype=torch.float64) for _ in range(4))
    got = _grads(lambda *t: op.attention(*t, 2), q, k, v, g)
    other = _grads(lambda *t: _plain(*t, 4), q, k, v, g)
    assert not torch.allclose(got[0], other[0], rtol=1e-6, atol=1e-8)


def test_compiled_graph_through_the_operators(reference_backend):
    gen = torch.Generator().manual_seed(5)
    q, k, v, g = (torch.randn(2, 8, 32, generator=gen) for _ in range(4))
    compiled = torch.compile(lambda a, b, c: op.attention(a, b, c, 4), backend="aot_eager", fullgraph=True)
    got = _grads(compiled, q, k, v, g)
    want = _grads(lambda *t: _plain(*t, 4), q, k, v, g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_plain_attention_off_cuda_and_without_gradients():
    q = torch.randn(1, 4, 16, requires_grad=True)
    assert not op.attention_op_enabled(q, q, q, 2)  # CPU, not compiling
    with torch.no_grad():
        assert not op.attention_op_enabled(q, q, q, 2)


def test_transformer_and_self_attention_blocks_route_through_the_operators(reference_backend, monkeypatch):
    # the layers' q, k, v (self- and cross-attention, the UNet's GroupNorm attention block)
    # reach the operators in their [B, N, heads*d] form: the same outputs and parameter gradients
    import ldmkit.nn.attention as attention_module
    from ldmkit.nn.attention import SelfAttentionBlock
    from ldmkit.nn.transformer import SpatialTransformer

    torch.manual_seed(0)
    cases = [(SpatialTransformer(32, 2, 16, 24).double(), (torch.randn(2, 32, 4, 4, dtype=torch.float64),
                                                          torch.randn(2, 5, 24, dtype=torch.float64))),
             (SelfAttentionBlock(32, head_dim=8).double(), (torch.randn(2, 32, 3, 3, dtype=torch.float64),))]
    for block, inputs in cases:
        results = []
        for routed in (False, True):
            calls = []
            monkeypatch.setattr(attention_module, "attention_op_enabled",
                                lambda q, k, v, heads: calls.append(heads) or routed)
            block.zero_grad()
            out = block(*inputs)
            out.square().sum().backward()
            results.append([out.detach()] + [p.grad.clone() for p in block.parameters()])
            assert calls  # the gate was asked
        for a, b in zip(*results):  # (the float32 log-sum-exp: ~5e-8 relative; the keys' bias
            # has no gradient at all, softmax being blind to it)
            assert (a - b).norm().item() <= 1e-6 * b.norm().item() + 1e-12
