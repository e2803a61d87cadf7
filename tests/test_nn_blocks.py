"""Building blocks against closed forms and naive reference implementations."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from ldmkit.errors import UserError
from ldmkit.nn import (
    CrossAttention,
    DownSample,
    FeedForward,
    ResNetBlock,
    SelfAttentionBlock,
    SpatialTransformer,
    TimestepEmbedding,
    TransformerBlock,
    UpSample,
    timestep_embedding,
)


@pytest.fixture(autouse=True)
def _seed_one_thread() -> Iterator[None]:
    # One thread: two on a shared two-core machine run several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# ---- timestep embedding --------------------------------------------------------------------


def test_timestep_embedding_closed_form() -> None:
    # dim 4: frequencies 10000**(-0/2), 10000**(-1/2) = 1, 0.01
    t = torch.tensor([1.0, 50.0])
    emb = timestep_embedding(t, 4)
    f = torch.tensor([1.0, 0.01])
    args = t[:, None] * f
    torch.testing.assert_close(emb, torch.cat([args.cos(), args.sin()], dim=1))
    emb_sin_first = timestep_embedding(t, 4, flip_sin_to_cos=False)
    torch.testing.assert_close(emb_sin_first, torch.cat([args.sin(), args.cos()], dim=1))


def test_timestep_embedding_freq_shift_and_odd_dim() -> None:
    # freq_shift=1, dim 6 (half 3): exponents -ln(1e4) * i / 2, i = 0, 1, 2 -> 1, 1e-2, 1e-4
    t = torch.tensor([3.0])
    emb = timestep_embedding(t, 7, freq_shift=1.0, max_period=10000.0)
    assert emb.shape == (1, 7)
    f = torch.tensor([1.0, 1e-2, 1e-4])
    torch.testing.assert_close(emb[0, :3], (3 * f).cos())
    torch.testing.assert_close(emb[0, 3:6], (3 * f).sin())
    assert emb[0, 6] == 0


def test_timestep_embedding_float32_under_autocast_and_scalar() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = timestep_embedding(torch.tensor(999), 8)
    assert emb.shape == (1, 8) and emb.dtype == torch.float32
    # bf16 t*f would round 999 to 1000; float32 keeps the exact angle.
    assert math.isclose(emb[0, 4].item(), math.sin(999.0), abs_tol=1e-5)
    with pytest.raises(UserError):
        timestep_embedding(torch.zeros(2, 2), 8)


def test_timestep_mlp_shape() -> None:
    mlp = TimestepEmbedding(8, 32)
    assert mlp(torch.randn(3, 8)).shape == (3, 32)


# ---- ResNet block ----------------------------------------------------------------------------


def test_resnet_zero_init_is_identity_and_skip_kinds() -> None:
    x = torch.randn(2, 16, 8, 8)
    block = ResNetBlock(16, 16, 32, groups=4, zero_init=True)
    torch.testing.assert_close(block(x, torch.randn(2, 32)), x)
    assert isinstance(block.skip, torch.nn.Identity)
    assert ResNetBlock(16, 24, groups=4).skip.kernel_size == (1, 1)
    assert ResNetBlock(16, 24, groups=4, conv_shortcut=True).skip.kernel_size == (3, 3)
    assert ResNetBlock(16, 24, groups=4)(x).shape == (2, 24, 8, 8)


def test_resnet_scale_shift_is_film() -> None:
    """With a zero second conv path replaced by the identity we can read h after FiLM directly."""
    block = ResNetBlock(8, 8, 4, groups=2, scale_shift=True)
    assert block.emb_proj.out_features == 16
    x, emb = torch.randn(2, 8, 5, 5), torch.randn(2, 4)
    captured = {}
    block.dropout.register_forward_hook(lambda m, i, o: captured.setdefault("h", i[0]))
    block(x, emb)
    h1 = block.conv1(F.silu(block.norm1(x)))
    scale, shift = block.emb_proj(F.silu(emb)).chunk(2, dim=1)
    expected = F.silu(block.norm2(h1) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
    torch.testing.assert_close(captured["h"], expected)


def test_resnet_additive_embedding_shifts_before_norm2() -> None:
    block = ResNetBlock(8, 8, 4, groups=2)
    assert block.emb_proj.out_features == 8
    # A per-channel constant added before a GroupNorm of one channel per group is removed by it:
    # use groups=8 (one channel per group) to see the embedding vanish exactly.
    block = ResNetBlock(8, 8, 4, groups=8)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x, torch.randn(2, 4)), block(x, torch.randn(2, 4)))


def test_resnet_errors() -> None:
    with pytest.raises(UserError):
        ResNetBlock(8, 8, 4, groups=2)(torch.randn(1, 8, 4, 4))  # embedding missing
    with pytest.raises(UserError):
        ResNetBlock(8, 8, groups=2)(torch.randn(1, 8, 4, 4), torch.randn(1, 4))
    with pytest.raises(UserError):
        ResNetBlock(10, 10, groups=4)
    with pytest.raises(UserError):
        ResNetBlock(8, 8, groups=2)(torch.randn(1, 4, 4, 4))


# ---- attention -------------------------------------------------------------------------------


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = q.shape
    d = c // heads
    out = []
    for h in range(heads):
        qs, ks, vs = (z[..., h * d:(h + 1) * d] for z in (q, k, v))
        weights = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(d), dim=-1)
        out.append(weights @ vs)
    return torch.cat(out, dim=-1)


def test_self_attention_matches_naive_multi_head() -> None:
    block = SelfAttentionBlock(16, head_dim=4, groups=4)
    assert block.heads == 4
    x = torch.randn(2, 16, 3, 5)
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    attn = _naive_attention(block.to_q(tokens), block.to_k(tokens), block.to_v(tokens), 4)
    expected = x + block.to_out(attn).transpose(1, 2).reshape(2, 16, 3, 5)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_self_attention_head_resolution_errors() -> None:
    assert SelfAttentionBlock(16, num_heads=2, groups=4).head_dim == 8
    assert SelfAttentionBlock(16, groups=4).heads == 1
    with pytest.raises(UserError):
        SelfAttentionBlock(16, num_heads=3, groups=4)
    with pytest.raises(UserError):
        SelfAttentionBlock(16, num_heads=2, head_dim=4, groups=4)


def test_cross_attention_single_key_closed_form() -> None:
    # One context token: softmax over one key is 1, so every query gets to_out(to_v(context)).
    attn = CrossAttention(8, 6, heads=2, head_dim=4)
    assert attn.to_q.bias is None and attn.to_k.bias is None and attn.to_out.bias is not None
    x, ctx = torch.randn(2, 7, 8), torch.randn(2, 1, 6)
    expected = attn.to_out(attn.to_v(ctx)).expand(2, 7, 8)
    torch.testing.assert_close(attn(x, ctx), expected, atol=1e-6, rtol=1e-5)


def test_cross_attention_matches_naive() -> None:
    attn = CrossAttention(8, 6, heads=2, head_dim=4)
    x, ctx = torch.randn(2, 7, 8), torch.randn(2, 3, 6)
    expected = attn.to_out(_naive_attention(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), 2))
    torch.testing.assert_close(attn(x, ctx), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError):
        attn(x, torch.randn(2, 3, 5))


def test_geglu_closed_form() -> None:
    ff = FeedForward(4, mult=2)
    x = torch.randn(3, 5, 4)
    pre = ff.proj_in(x)
    value, gate = pre[..., :8], pre[..., 8:]
    gelu = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2)))  # exact GELU (Hendrycks & Gimpel 2016)
    torch.testing.assert_close(ff(x), ff.proj_out(value * gelu), atol=1e-6, rtol=1e-5)


def test_transformer_block_needs_context_iff_cross() -> None:
    block = TransformerBlock(8, 2, 4, context_dim=6)
    x = torch.randn(2, 5, 8)
    assert block(x, torch.randn(2, 3, 6)).shape == (2, 5, 8)
    with pytest.raises(UserError):
        block(x)
    self_only = TransformerBlock(8, 2, 4)
    assert not hasattr(self_only, "attn2")
    with pytest.raises(UserError):
        self_only(x, torch.randn(2, 3, 8))


def test_spatial_transformer_linear_equals_conv_projection() -> None:
    conv = SpatialTransformer(16, 2, 8, 6, depth=2, groups=4)
    linear = SpatialTransformer(16, 2, 8, 6, depth=2, linear_projection=True, groups=4)
    state = conv.state_dict()
    for name in ("proj_in.weight", "proj_out.weight"):
        state[name] = state[name][:, :, 0, 0]  # a 1x1 conv is a linear map over channels
    linear.load_state_dict(state)
    x, ctx = torch.randn(2, 16, 4, 3), torch.randn(2, 5, 6)
    out = conv(x, ctx)
    assert out.shape == x.shape
    torch.testing.assert_close(linear(x, ctx), out, atol=1e-5, rtol=1e-5)
    assert conv.norm.eps == 1e-6


# ---- resampling ------------------------------------------------------------------------------


def _delta_conv(block: DownSample | UpSample, row: int, col: int) -> None:
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.bias.zero_()
        block.conv.weight[0, 0, row, col] = 1.0


def test_downsample_paddings_closed_form() -> None:
    x = torch.randn(1, 1, 6, 6)
    sym, asym = DownSample(1, padding=1), DownSample(1, padding=0)
    _delta_conv(sym, 1, 1)  # centre tap, symmetric pad: picks x[2i, 2j]
    torch.testing.assert_close(sym(x), x[:, :, ::2, ::2])
    _delta_conv(asym, 0, 0)  # top-left tap, pad only right/bottom: picks x[2i, 2j] too
    torch.testing.assert_close(asym(x), x[:, :, ::2, ::2])
    _delta_conv(sym, 0, 0)  # top-left tap with symmetric pad: x[2i-1, 2j-1], zero on the border
    expected = F.pad(x, (1, 0, 1, 0))[:, :, :-1:2, :-1:2]
    torch.testing.assert_close(sym(x), expected)
    pool = DownSample(1, use_conv=False)
    torch.testing.assert_close(pool(x), x.reshape(1, 1, 3, 2, 3, 2).mean(dim=(3, 5)))
    with pytest.raises(UserError):
        DownSample(4, 8, use_conv=False)
    with pytest.raises(UserError):
        DownSample(4, padding=2)


def test_upsample_nearest_and_output_size() -> None:
    x = torch.randn(2, 3, 2, 3)
    plain = UpSample(3, use_conv=False)
    torch.testing.assert_close(plain(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    conv = UpSample(3, 5)
    assert conv(x).shape == (2, 5, 4, 6)
    assert conv(x, output_size=(3, 5)).shape == (2, 5, 3, 5)


@pytest.mark.parametrize("form", ["phase", "transposed"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 6), (1, 8, 8, 1, 1), (3, 16, 4, 7, 5)])
def test_upsample_conv_equals_interpolate_then_conv(shape: tuple, channels_last: bool, form: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Both forms of nn/upsample_conv.py (phase kernels + interleave, one transposed convolution)
    are the same function as nearest 2x then a padded conv3x3: values and all three gradients
    agree to float64 rounding, in either layout."""
    import ldmkit.nn.resample as resample

    monkeypatch.setattr(resample, "UPSAMPLE_FORM", form)
    batch, cin, cout, height, width = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(batch, cin, height, width, dtype=torch.float64, generator=gen, requires_grad=True)
    up = UpSample(cin, cout).double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xin = x.contiguous(memory_format=fmt)
    ref = F.conv2d(F.interpolate(xin, scale_factor=2.0, mode="nearest"), up.conv.weight, up.conv.bias, padding=1)
    out = up(xin)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    if channels_last and height * width > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    params = (x, up.conv.weight, up.conv.bias)
    for got, want in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


def test_upsample_conv_does_the_phase_convolutions_flops() -> None:
    """The exact-2x path really runs the phase convolution: 16 (H+1)(W+1) multiply-adds per
    channel pair instead of 9 * 4HW (0.5625x at 8x8), as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    up, x = UpSample(16, 8), torch.randn(2, 16, 8, 8)

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    plain = flops(lambda: F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), up.conv.weight,
                                   up.conv.bias, padding=1))
    assert flops(lambda: up(x)) * (9 * 4 * 8 * 8) == plain * (16 * 9 * 9)


def test_upsample_takes_the_transposed_convolution_from_128x128_input_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` (the default) picks the transposed form where cuDNN ran it faster (the decoder's last
    upsampling) and the phase form below; it runs a transposed convolution exactly there."""
    import ldmkit.nn.resample as resample

    assert resample.UPSAMPLE_FORM == "auto"
    assert resample.upsample_form(torch.empty(1, 1, 64, 64)) == "phase"
    assert resample.upsample_form(torch.empty(1, 1, 128, 128)) == "transposed"
    calls = []
    real = F.conv_transpose2d
    monkeypatch.setattr(F, "conv_transpose2d", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    up = UpSample(2, 2)
    assert up(torch.randn(1, 2, 128, 128)).shape == (1, 2, 256, 256)
    assert up(torch.randn(1, 2, 64, 64)).shape == (1, 2, 128, 128)
    assert calls == [(1, 2, 128, 128)]


def test_upsample_odd_target_size_still_matches_interpolate() -> None:
    up = UpSample(4, 6).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, size=(5, 6), mode="nearest"), up.conv.weight, up.conv.bias, padding=1)
    torch.testing.assert_close(up(x, output_size=(5, 6)), ref)
    ref2 = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), up.conv.weight, up.conv.bias, padding=1)
    torch.testing.assert_close(up(x, output_size=(6, 6)), ref2, rtol=0, atol=1e-12)


# ---- dtypes and memory formats ---------------------------------------------------------------


def _blocks() -> list[tuple[torch.nn.Module, tuple]]:
    x, emb, ctx = torch.randn(2, 16, 8, 8), torch.randn(2, 32), torch.randn(2, 3, 12)
    return [
        (ResNetBlock(16, 32, 32, groups=8, scale_shift=True), (x, emb)),
        (ResNetBlock(16, 16, 32, groups=8), (x, emb)),
        (SelfAttentionBlock(16, num_heads=2, groups=8), (x,)),
        (SpatialTransformer(16, 2, 8, 12, groups=8), (x, ctx)),
        (SpatialTransformer(16, 2, 8, 12, linear_projection=True, groups=8), (x, ctx)),
        (DownSample(16), (x,)),
        (DownSample(16, padding=0), (x,)),
        (UpSample(16), (x,)),
    ]


@pytest.mark.parametrize("index", range(8))
def test_block_shapes_fp32_bf16_channels_last(index: int) -> None:
    block, args = _blocks()[index]
    out = block(*args)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = block(*args)
    assert out_bf16.shape == out.shape and out_bf16.dtype in (torch.bfloat16, torch.float32)
    assert torch.isfinite(out_bf16).all()
    assert (out_bf16.float() - out).abs().max() < 0.1 * out.abs().max() + 0.1
    x_cl = args[0].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(block(x_cl, *args[1:]), out, atol=1e-5, rtol=1e-5)
