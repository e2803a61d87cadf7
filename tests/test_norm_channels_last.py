"""The channels_last form of GroupNorm (+ SiLU) used in compiled CUDA inference: the same function
as PyTorch's GroupNorm, checked in float64 on the CPU, and where the library takes it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ldmkit.nn.norm_silu as norm_silu
from ldmkit.nn import ResNetBlock, SelfAttentionBlock
from ldmkit.nn.norm_channels_last import apply_group_norm, channels_last_norm_enabled, group_norm_channels_last


def _norm(channels: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    norm = nn.GroupNorm(groups, channels, eps=1e-5, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    return norm


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("channels,groups,size", [(64, 32, (8, 8)), (48, 4, (5, 7)), (32, 32, (4, 4)), (12, 1, (3, 3))])
@pytest.mark.parametrize("silu", [False, True])
def test_equals_group_norm(layout, channels, groups, size, silu):
    g = torch.Generator().manual_seed(channels + groups)
    # a large, uneven mean per channel: the group variance must include the spread of channel means
    x = (torch.randn(3, channels, *size, generator=g, dtype=torch.float64) * 2
         + torch.randn(1, channels, 1, 1, generator=g, dtype=torch.float64) * 10).to(memory_format=layout)
    add = torch.randn(3, channels, generator=g, dtype=torch.float64) * 3
    norm = _norm(channels, groups)
    for a in (None, add):
        want = norm(x if a is None else x + a[:, :, None, None])
        want = F.silu(want) if silu else want
        got = group_norm_channels_last(x, norm, a, silu=silu)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        assert got.stride() == x.stride()


def test_without_affine_parameters_and_in_bf16():
    x = torch.randn(2, 16, 6, 6).to(memory_format=torch.channels_last)
    norm = _norm(16, 4, affine=False).float()
    torch.testing.assert_close(group_norm_channels_last(x, norm), norm(x), rtol=1e-5, atol=1e-5)
    got = group_norm_channels_last(x.bfloat16(), norm, silu=True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), F.silu(norm(x.bfloat16().float())), rtol=2e-2, atol=2e-2)


def test_not_taken_outside_compiled_cuda_inference():
    x = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert not channels_last_norm_enabled(x)  # CPU, eager
    norm = _norm(8, 2).float()
    assert torch.equal(apply_group_norm(x, norm), norm(x))


def test_blocks_take_it_where_enabled(monkeypatch):
    # Where the rule says yes, the ResNet block's two norms and the attention block's norm run
    # through group_norm_channels_last, and the blocks compute the same function.
    import ldmkit.nn.attention as attention
    import ldmkit.nn.norm_channels_last as ncl

    calls = []

    def spy(x, norm, add=None, *, silu=False):
        calls.append(silu)
        return group_norm_channels_last(x, norm, add, silu=silu)

    torch.manual_seed(0)
    res = ResNetBlock(16, 32, emb_dim=8, groups=4).double().eval()
    attn = SelfAttentionBlock(32, num_heads=2, groups=4).double().eval()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    emb = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        want = attn(res(x, emb))
        monkeypatch.setattr(norm_silu, "channels_last_norm_enabled", lambda t: True)
        monkeypatch.setattr(norm_silu, "group_norm_channels_last", spy)
        monkeypatch.setattr(ncl, "channels_last_norm_enabled", lambda t: True)
        monkeypatch.setattr(ncl, "group_norm_channels_last", spy)
        assert attention.apply_group_norm is ncl.apply_group_norm
        got = attn(res(x, emb))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert calls == [True, True, False]  # norm1 + SiLU, norm2 + SiLU (with the embedding), attention's norm


@pytest.mark.parametrize("silu", [False, True])
def test_joined_input_takes_statistics_per_part(silu):
    # norm(cat([x, skip])) with each part's statistics from the part, with the parts' boundary
    # between groups (24 + 8 channels in groups of 8) and inside one (20 + 12).
    g = torch.Generator().manual_seed(3)
    for c1, c2 in ((24, 8), (20, 12)):
        x = (torch.randn(2, c1, 5, 6, generator=g, dtype=torch.float64) + 4).to(memory_format=torch.channels_last)
        skip = torch.randn(2, c2, 5, 6, generator=g, dtype=torch.float64) * 3 - 2
        skip = skip.to(memory_format=torch.channels_last)
        norm = _norm(c1 + c2, 4)
        want = norm(torch.cat([x, skip], dim=1))
        want = F.silu(want) if silu else want
        torch.testing.assert_close(group_norm_channels_last(x, norm, silu=silu, concat=skip), want,
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("out_ch,conv_shortcut", [(16, False), (16, True), (40, False)])
def test_resnet_block_with_a_joined_input(monkeypatch, out_ch, conv_shortcut):
    # ResNetBlock(x, emb, concat=skip) is the block on cat([x, skip]): on the plain path (the cat
    # built) and on the channels_last path, where the skip convolution runs once per part
    # (out_ch=40: the identity skip).
    torch.manual_seed(1)
    block = ResNetBlock(40, out_ch, emb_dim=8, groups=4, conv_shortcut=conv_shortcut).double().eval()
    x = torch.randn(2, 24, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    skip = torch.randn(2, 16, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    emb = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        want = block(torch.cat([x, skip], dim=1), emb)
        torch.testing.assert_close(block(x, emb, skip), want, rtol=1e-10, atol=1e-10)
        import ldmkit.nn.resnet as resnet

        monkeypatch.setattr(resnet, "channels_last_norm_enabled", lambda t: True)
        monkeypatch.setattr(norm_silu, "channels_last_norm_enabled", lambda t: True)
        whole = []
        block.skip.register_forward_hook(lambda m, inp, out: whole.append(inp[0].shape[1]))
        got = block(x, emb, skip)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert whole == []  # the skip path never ran on a joined input
