"""1x1 convolutions as matmuls over channels_last pixels (`nn/pointwise_conv.py`): the same
function as the convolution, and the layers that have 1x1 convolutions route them through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldmkit.nn import pointwise_conv
from ldmkit.nn.pointwise_conv import conv1x1, conv1x1_as_matmul_enabled
from ldmkit.nn.resnet import ResNetBlock
from ldmkit.nn.transformer import SpatialTransformer

TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_form_is_the_convolution(channels_last, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64) if bias else None
    out = conv1x1(x, w, b, as_matmul=True)
    torch.testing.assert_close(out, F.conv2d(x, w, b), **TIGHT)
    assert out.shape == (2, 4, 3, 5) and out.is_contiguous(memory_format=torch.channels_last)


def test_off_outside_compiled_cuda_inference():
    x = torch.randn(1, 4, 2, 2).contiguous(memory_format=torch.channels_last)
    assert not conv1x1_as_matmul_enabled(x)  # CPU, eager


@pytest.fixture
def matmul_everywhere(monkeypatch):
    """Force the matmul form wherever a layer asks, counting the asks."""
    asked = []
    monkeypatch.setattr(pointwise_conv, "conv1x1_as_matmul_enabled", lambda x: asked.append(x.shape) or True)
    return asked


def test_spatial_transformer_projections(matmul_everywhere):
    torch.manual_seed(1)
    block = SpatialTransformer(8, heads=2, head_dim=4, context_dim=6, groups=2).double().eval()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    context = torch.randn(2, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        got = block(x, context)
        assert len(matmul_everywhere) == 2  # proj_in and proj_out
        expected = _without(block, x, context)
    torch.testing.assert_close(got, expected, **TIGHT)


def test_resnet_skip_convolution_whole_and_in_parts(matmul_everywhere):
    torch.manual_seed(2)
    block = ResNetBlock(10, 6, 8, groups=2, concat_channels=4).double().eval()
    h = torch.randn(2, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(2, 4, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        got_parts = block._skip_of_parts(h, skip)
        got_block = block(h, emb, concat=skip)
        assert len(matmul_everywhere) == 3  # two parts, then the joined input
        expected_skip = F.conv2d(torch.cat([h, skip], 1), block.skip.weight, block.skip.bias)
        expected_block = _without(block, h, emb, concat=skip)
    torch.testing.assert_close(got_parts, expected_skip, **TIGHT)
    torch.testing.assert_close(got_block, expected_block, **TIGHT)


def _without(module, *args, **kwargs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pointwise_conv, "conv1x1_as_matmul_enabled", lambda x: False)
        return module(*args, **kwargs)
