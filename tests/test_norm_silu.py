"""GroupNorm + SiLU with Triton reductions (`ldmkit.nn.norm_silu`).

The kernels run on the CPU in Triton's interpreter (switched on in conftest.py); every case is
checked, forward and backward, against PyTorch's GroupNorm in float64.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("triton")

import ldmkit.nn.norm_silu as gns  # noqa: E402
from ldmkit.nn.norm_silu_plan import SPLIT_UNIT, pixel_splits  # noqa: E402
import ldmkit.nn.resnet as resnet_module  # noqa: E402
from ldmkit.nn.resnet import ResNetBlock  # noqa: E402


def _norm(C: int, groups: int, seed: int) -> nn.GroupNorm:
    norm = nn.GroupNorm(groups, C)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(C, generator=g))
        norm.bias.copy_(0.3 * torch.randn(C, generator=g))
    return norm


def _grads(fn, x, add, norm, dy):
    """Output and gradients (x, add, weight, bias) of fn(x, add, norm) for upstream gradient dy."""
    x = x.detach().requires_grad_()  # not cloned: a strided view must reach the kernels as it is
    add = add.detach().clone().requires_grad_() if add is not None else None
    norm.zero_grad()
    y = fn(x, add, norm)
    y.backward(dy)
    return y, x.grad, add.grad if add is not None else None, norm.weight.grad.clone(), norm.bias.grad.clone()


def _reference(x, add, norm, dy):
    """PyTorch's GroupNorm and SiLU in float64."""
    norm64 = nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps).double()
    norm64.load_state_dict(norm.state_dict())
    out = _grads(lambda x, a, n: F.silu(n(x if a is None else x + a[:, :, None, None])),
                 x.double(), add.double() if add is not None else None, norm64, dy.double())
    return out


def _fused(x, add, norm):
    return gns.group_norm_silu(x, norm, add, fused=True)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape, groups, channels_last, with_add", [
    ((2, 64, 5, 7), 8, False, False),      # fewer pixels than a split
    ((2, 64, 5, 7), 8, True, True),
    ((3, 96, 16, 16), 32, True, True),     # two pixel splits; 96 channels: a partial 64-channel tile
    ((1, 32, 20, 15), 4, False, True),     # 300 pixels: three splits, the last one short
])
def test_forward_and_backward_match_pytorch(shape, groups, channels_last, with_add):
    g = torch.Generator().manual_seed(1)
    N, C, H, W = shape
    x = 2 * torch.randn(shape, generator=g) + 0.7
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    add = torch.randn(N, C, generator=g) if with_add else None
    dy = torch.randn(shape, generator=g)
    norm = _norm(C, groups, seed=2)
    got = _grads(_fused, x, add, norm, dy)
    want = _reference(x, add, norm, dy)
    for name, a, b in zip(("y", "dx", "d_add", "d_weight", "d_bias"), got, want):
        if b is None:
            assert a is None
            continue
        assert _rel(a, b) < 1e-5, name
    assert got[0].dtype == x.dtype
    assert got[0].is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("view", ["every_other_column", "rows_and_columns_swapped", "channel_slice",
                                  "swapped_every_other_row"])
def test_strided_views_are_read_in_place(view):
    # Pixels that do not merge into one axis (a W stride that is not H's / W) are addressed
    # through both strides; the result must be that of the same values made contiguous. The last
    # view is neither dense nor flat: y gets other strides than x (empty_like makes it dense).
    g = torch.Generator().manual_seed(11)
    if view == "every_other_column":
        x = torch.randn(2, 32, 9, 22, generator=g)[..., ::2]
    elif view == "rows_and_columns_swapped":
        x = torch.randn(2, 32, 11, 9, generator=g).transpose(2, 3)
    elif view == "swapped_every_other_row":
        x = torch.randn(2, 32, 22, 9, generator=g).transpose(2, 3)[..., ::2]
    else:
        x = torch.randn(2, 48, 10, 10, generator=g).to(memory_format=torch.channels_last)[:, 8:40]
    dy = torch.randn(x.shape, generator=g).transpose(2, 3).contiguous().transpose(2, 3)
    add = torch.randn(x.shape[:2], generator=g)
    norm = _norm(32, 8, seed=12)
    got = _grads(_fused, x, add, norm, dy)
    want = _reference(x.contiguous(), add, norm, dy.contiguous())
    for name, a, b in zip(("y", "dx", "d_add", "d_weight", "d_bias"), got, want):
        assert _rel(a, b) < 1e-5, name


def test_bf16_input_gives_bf16_output_within_its_rounding():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 8, 8, generator=g).to(torch.bfloat16).to(memory_format=torch.channels_last)
    add = torch.randn(2, 64, generator=g).to(torch.bfloat16)
    dy = torch.randn(2, 64, 8, 8, generator=g).to(torch.bfloat16)
    norm = _norm(64, 32, seed=4)
    got = _grads(_fused, x, add, norm, dy)
    want = _reference(x, add, norm, dy)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.bfloat16
    for a, b in zip(got, want):
        assert _rel(a, b) < 8e-3  # bf16 keeps 8 bits: 2^-9 relative rounding per element


@pytest.mark.parametrize("outlier", [0.0, 8.0])
def test_variance_is_exact_when_the_mean_dwarfs_the_spread(outlier):
    # E[x^2] - E[x]^2 in float32 loses the variance of 1000 + N(0, 1) (its error is ~10%); the
    # kernels sum x - K with K the first value of each channel's split. An outlier there (8
    # standard deviations) is the shifted sums' worst case.
    g = torch.Generator().manual_seed(5)
    x = 1000 + torch.randn(2, 32, 16, 16, generator=g)
    x.view(2, 32, -1)[:, :, 0] += outlier
    x.view(2, 32, -1)[:, :, 128] += outlier  # the second split's first pixel
    dy = torch.randn(2, 32, 16, 16, generator=g)
    norm = _norm(32, 8, seed=6)
    got = _grads(_fused, x, None, norm, dy)
    want = _reference(x, None, norm, dy)
    assert _rel(got[0], want[0]) < 1e-4
    assert _rel(got[1], want[1]) < 1e-2  # dx: float32 x itself holds 1000 +- 6e-5


def test_compiles_as_one_graph_and_matches_eager():
    # The custom operators' shape functions let dynamo trace the whole step without a break;
    # inductor gets the channels_last tensor as it is (flexible layout).
    torch.manual_seed(7)
    norm, conv = _norm(64, 8, seed=8), nn.Conv2d(64, 16, 3, padding=1)

    def loss(x, add):
        return conv(gns.group_norm_silu(x, norm, add, fused=True)).square().mean()

    x = torch.randn(2, 64, 10, 30).to(memory_format=torch.channels_last).requires_grad_()
    add = torch.randn(2, 64, requires_grad=True)
    compiled = torch.compile(loss, fullgraph=True)
    compiled(x, add).backward()
    got = (x.grad.clone(), add.grad.clone(), norm.weight.grad.clone())
    x.grad = add.grad = None
    norm.zero_grad()
    conv(F.silu(norm(x + add[:, :, None, None]))).square().mean().backward()
    for a, b in zip(got, (x.grad, add.grad, norm.weight.grad)):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_compiles_for_inference_as_one_graph(no_grad):
    # LDMKIT_FUSED_GROUPNORM=all takes the path in compiled inference: the autograd function's
    # forward alone, traced without a break, equal to PyTorch's.
    torch.manual_seed(13)
    norm = _norm(64, 8, seed=14)
    x = torch.randn(2, 64, 12, 20).to(memory_format=torch.channels_last)
    add = torch.randn(2, 64)
    compiled = torch.compile(lambda x, add: gns.group_norm_silu(x, norm, add, fused=True), fullgraph=True)
    with no_grad():
        got = compiled(x, add)
        want = F.silu(norm(x + add[:, :, None, None]))
    assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("with_emb", [True, False])
def test_resnet_block_takes_the_fused_path_with_the_same_result(monkeypatch, with_emb):
    # Both GroupNorm -> SiLU pairs of the block; the second gets conv1's bias (and the timestep
    # embedding, with one) as its `add`, conv1 running without a bias (the VAE's blocks have no
    # embedding: the bias alone is the add there).
    torch.manual_seed(9)
    block = ResNetBlock(32, 64, emb_dim=16 if with_emb else None, groups=8)
    x, emb = torch.randn(2, 32, 12, 12), torch.randn(2, 16) if with_emb else None
    with torch.no_grad():
        block.conv1.bias.normal_(0.0, 1.0)  # a bias far from the default init's, so a lost one shows

    def run():
        block.zero_grad()
        xx = x.clone().requires_grad_()
        y = block(xx, emb)
        y.square().mean().backward()
        grads = [block.norm2.weight.grad, block.conv1.bias.grad, block.conv1.weight.grad]
        if with_emb:
            grads.append(block.emb_proj.weight.grad)
        return [y, xx.grad] + [g.clone() for g in grads]

    plain = run()
    adds = []
    real = gns._GroupNormSiLU.apply
    monkeypatch.setattr(gns, "fused_group_norm_enabled", lambda t: True)
    monkeypatch.setattr(resnet_module, "fused_group_norm_enabled", lambda t: True)
    monkeypatch.setattr(gns._GroupNormSiLU, "apply", lambda *a: adds.append(a[1]) or real(*a))
    fused = run()
    assert len(adds) == 2 and adds[0] is None and adds[1].shape == (2, 64)
    for a, b in zip(fused, plain):
        assert _rel(a, b) < 1e-5


def test_fused_path_is_off_on_the_cpu_and_the_switch_is_read_at_import(monkeypatch):
    assert not gns.fused_group_norm_enabled(torch.zeros(1, 4, 2, 2))
    for value, mode in (("0", "0"), ("all", "all"), ("train", "train"), ("1", "auto"), ("", "auto")):
        monkeypatch.setenv(gns.ENV_SWITCH, value)
        assert gns._mode_from_environment() == mode, value
    # and the module's mode is that reading, taken when it is imported (one fresh interpreter)
    code = "import ldmkit.nn.norm_silu as g; print(g.FUSED_MODE)"
    env = {**os.environ, gns.ENV_SWITCH: "train"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "train"


@pytest.mark.parametrize("mode, grad, pixels, want", [
    ("auto", True, 8, True), ("auto", False, 64, False), ("auto", False, 128, True), ("auto", False, 256, True),
    ("train", True, 8, True), ("train", False, 128, False), ("all", True, 8, True), ("all", False, 8, True),
    ("0", True, 128, False), ("0", False, 128, False),
])
def test_the_mode_decides_where_a_compiled_cuda_graph_takes_the_fused_path(monkeypatch, mode, grad, pixels, want):
    # "auto" runs it in training and in inference from 128x128 pixels (the autoencoder's large levels).
    class CudaTensor:  # all the check reads of a tensor
        is_cuda = True
        shape = (2, 64, pixels, pixels)

    monkeypatch.setattr(gns, "FUSED_MODE", mode)
    monkeypatch.setattr(gns, "TRITON_IMPORTABLE", True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.set_grad_enabled(grad):
        assert gns.fused_group_norm_enabled(CudaTensor()) is want
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)  # eager: never
    assert gns.fused_group_norm_enabled(CudaTensor()) is False


def test_an_unknown_switch_value_warns_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv(gns.ENV_SWITCH, "fast")
    with pytest.warns(UserWarning, match="LDMKIT_FUSED_GROUPNORM"):
        assert gns._mode_from_environment() == "auto"


@pytest.mark.parametrize("N, C, HW", [(256, 128, 1024), (1, 64, 4096), (2, 512, 16), (3, 96, 300)])
def test_pixel_splits_cover_the_pixels_in_whole_units(N, C, HW):
    per_split, splits = pixel_splits(N, C, HW)
    assert per_split % SPLIT_UNIT == 0
    assert (splits - 1) * per_split < HW <= splits * per_split
    if N * C <= 64:  # few channel tiles: the pixels are split to occupy the GPU
        assert splits > 1
