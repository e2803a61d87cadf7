"""The exported building blocks say that they take [B, C, H, W] when given a tensor without its
batch dimension (ResNetBlock said "expects 32 input channels, got 5", reading H as channels;
SelfAttentionBlock failed on a tuple unpack), and refuse widths that are not positive ints when
built (ResNetBlock(0, ...) built, and failed only at its first call)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmkit import DownSample, ResNetBlock, SelfAttentionBlock, UpSample
from ldmkit.errors import UserError
from ldmkit.nn import SpatialTransformer


def test_a_tensor_without_its_batch_dimension_is_named_as_such() -> None:
    unbatched = torch.randn(32, 5, 7)
    with pytest.raises(UserError, match=r"^ResNetBlock expects x of shape \[B, 32, H, W\], got \(32, 5, 7\)$"):
        ResNetBlock(32, 64, 16)(unbatched, torch.randn(32, 16))
    with pytest.raises(UserError, match=r"^ResNetBlock expects x and concat of shape \[B, C, H, W\], 32 channels "
                                        r"together, got \(2, 16, 5, 7\) and \(16, 5, 7\)$"):
        ResNetBlock(32, 64, 16)(torch.randn(2, 16, 5, 7), torch.randn(2, 16), torch.randn(16, 5, 7))
    with pytest.raises(UserError, match=r"^SelfAttentionBlock expects x of shape \[B, 32, H, W\], got \(32, 5, 7\)$"):
        SelfAttentionBlock(32, num_heads=4)(unbatched)
    with pytest.raises(UserError, match=r"^SpatialTransformer expects x of shape \[B, 32, H, W\], got \(32, 5, 7\)$"):
        SpatialTransformer(32, 2, 16, None)(unbatched)
    # without a conv, pooling read [C, H, W] as unbatched and interpolation as [N, C, L] (W doubled only)
    with pytest.raises(UserError, match=r"^DownSample expects x of shape \[B, C, H, W\], got \(32, 6, 8\)$"):
        DownSample(32, use_conv=False)(torch.randn(32, 6, 8))
    with pytest.raises(UserError, match=r"^UpSample expects x of shape \[B, C, H, W\], got \(32, 5, 7\)$"):
        UpSample(32, use_conv=False)(unbatched)
    with pytest.raises(UserError, match=r"^SelfAttentionBlock expects x of shape \[B, 32, H, W\], got \(2, 16, 5,"):
        SelfAttentionBlock(32, num_heads=4)(torch.randn(2, 16, 5, 7))


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ResNetBlock(0, 64, 16), "ResNetBlock: in_ch must be a positive int, got 0"),
    (lambda: ResNetBlock(32, -1), "ResNetBlock: out_ch must be a positive int, got -1"),
    (lambda: ResNetBlock(32.0), "ResNetBlock: in_ch must be a positive int, got 32.0"),
    (lambda: ResNetBlock(32, 32, 0), "ResNetBlock: emb_dim must be a positive int, got 0"),
    (lambda: ResNetBlock(32, groups=True), "ResNetBlock: groups must be a positive int, got True"),
    (lambda: SelfAttentionBlock(0), "SelfAttentionBlock: channels must be a positive int, got 0"),
    (lambda: DownSample(0), "DownSample: channels must be a positive int, got 0"),
    (lambda: UpSample(32, 0), "UpSample: out_channels must be a positive int, got 0"),
    (lambda: UpSample("32"), "UpSample: channels must be a positive int, got '32'"),
])
def test_widths_that_are_not_positive_ints_are_refused_when_built(build, message) -> None:
    with pytest.raises(UserError, match=f"^{message}$"):
        build()


def test_well_formed_blocks_still_build_and_run() -> None:
    x, emb = torch.randn(2, 32, 6, 8), torch.randn(2, 16)
    with torch.no_grad():
        assert ResNetBlock(np.int64(32), 64, 16)(x, emb).shape == (2, 64, 6, 8)  # numpy ints are ints
        joined = ResNetBlock(48, 64, None, groups=16, concat_channels=16)
        assert joined(x, None, torch.randn(2, 16, 6, 8)).shape == (2, 64, 6, 8)
        assert SelfAttentionBlock(32, num_heads=4)(x).shape == x.shape
        assert DownSample(32, use_conv=False)(x).shape == (2, 32, 3, 4)
        assert UpSample(32, use_conv=False)(x).shape == (2, 32, 12, 16)
