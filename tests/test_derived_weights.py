"""Weights layers derive from their parameters, cached for generation (`ldmkit.nn.derived_weights`):
the cached forms compute the same function, are used only while valid, follow parameter changes
through `refresh`, and leave training, state dicts and the EMA as they were."""
from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_class_models

from ldmkit import compiled_unet
from ldmkit.compiled_unet import CompiledUNet
from ldmkit.nn import derived_weights, resample
from ldmkit.nn.derived_weights import PREFIX, attach, derived, detach, refresh
from ldmkit.nn.resample import UpSample
from ldmkit.nn.resnet import ResNetBlock
from ldmkit.train.ema import EMA

CPU = torch.device("cpu")


def _upsample(seed: int = 0) -> UpSample:
    torch.manual_seed(seed)
    return UpSample(6, 5).double()


def _no_derivation(monkeypatch):
    """Make computing the kernels at call time fail, so a test sees that the cache was used."""
    def fail(*args, **kwargs):
        raise AssertionError("derived the kernel at call time")
    for name in ("phase_kernels", "transposed_kernel"):
        monkeypatch.setattr(resample, name, fail)
    monkeypatch.setattr(resample, "upsample2x_conv3x3", fail)
    monkeypatch.setattr(resample, "upsample2x_conv3x3_transposed", fail)


@pytest.mark.parametrize("form", ["phase", "transposed"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_with_cached_kernels_is_the_same_function(monkeypatch, form, channels_last):
    monkeypatch.setattr(resample, "UPSAMPLE_FORM", form)
    layer = _upsample()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layer.to(memory_format=fmt)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=fmt)
    with torch.no_grad():
        expected = layer(x)
    assert attach(layer) == 1
    _no_derivation(monkeypatch)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    kernel = getattr(layer, PREFIX + ("phase_weight" if form == "phase" else "transposed_weight"))
    assert kernel.is_contiguous(memory_format=fmt)  # no copy before cuDNN


def test_upsample_without_bias(monkeypatch):
    torch.manual_seed(5)
    layer = UpSample(4, 3).double()
    layer.conv.bias = None
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        attach(layer)
        assert derived(layer, "phase_bias") is None and derived(layer, "phase_weight") is not None
        _no_derivation(monkeypatch)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_cache_is_not_used_with_gradients_on():
    layer = _upsample()
    attach(layer)
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    assert derived(layer, "phase_weight") is None  # grad mode: training differentiates the derivation
    layer(x).square().sum().backward()
    assert layer.conv.weight.grad is not None and layer.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert derived(layer, "phase_weight") is not None


def test_a_changed_parameter_is_never_served_stale_and_refresh_updates_in_place():
    layer = _upsample()
    attach(layer)
    buffer = getattr(layer, PREFIX + "phase_weight")
    address = buffer.data_ptr()
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.conv.weight.mul_(-2.0)
        assert derived(layer, "phase_weight") is None  # eager calls check the parameters' versions
        expected = resample.upsample2x_conv3x3(x, layer.conv.weight, layer.conv.bias)
        torch.testing.assert_close(layer(x), expected)
        assert refresh(layer) == 1 and refresh(layer) == 0
        assert getattr(layer, PREFIX + "phase_weight").data_ptr() == address  # CUDA graphs keep reading it
        assert derived(layer, "phase_weight") is not None
        torch.testing.assert_close(layer(x), expected)


def test_cached_skip_slices_give_the_joined_skip_convolution():
    torch.manual_seed(3)
    block = ResNetBlock(10, 6, 8, groups=2, concat_channels=4).double()
    h, skip = torch.randn(2, 6, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = block.skip(torch.cat([h, skip], dim=1))
        assert attach(block) == 1
        w_x, w_skip = derived(block, "skip_weight_x"), derived(block, "skip_weight_concat")
        assert w_x.shape[1] == 6 and w_skip.shape[1] == 4 and w_x.is_contiguous() and w_skip.is_contiguous()
        torch.testing.assert_close(block._skip_of_parts(h, skip), expected, rtol=1e-12, atol=1e-12)
        # another split than the one cached: the block slices the weight itself
        torch.testing.assert_close(block._skip_of_parts(torch.cat([h, skip], 1)[:, :7], skip[:, 1:]), expected,
                                   rtol=1e-12, atol=1e-12)


def test_bad_concat_channels_is_a_user_error():
    from ldmkit.errors import UserError

    with pytest.raises(UserError, match="concat_channels"):
        ResNetBlock(8, 8, concat_channels=8)


def test_unet_attach_names_every_decoder_split_and_leaves_the_state_dict_alone():
    _, unet = tiny_class_models(3)
    keys = set(unet.state_dict())
    decoder_skips = [r for b in unet.up_blocks for r in b.resnets if isinstance(r.skip, torch.nn.Conv2d)]
    upsamplers = [b.upsample for b in unet.up_blocks if b.upsample is not None]
    assert decoder_skips and all(r.concat_channels for r in decoder_skips)
    assert attach(unet) == len(decoder_skips) + len(upsamplers)
    assert set(unet.state_dict()) == keys  # non-persistent: checkpoints never hold them
    detach(unet)
    assert not any(name.rsplit(".", 1)[-1].startswith(PREFIX) for name, _ in unet.named_buffers())
    with torch.no_grad():
        assert derived(upsamplers[0], "phase_weight") is None


def test_ema_ignores_derived_buffers():
    _, unet = tiny_class_models(3)
    ema = EMA(unet, decay=0.5)
    attach(unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(1.0)
    ema.update(unet)  # the average's and the model's buffers still pair up one to one
    avg = dict(ema.module.named_parameters())
    for name, p in unet.named_parameters():
        assert torch.allclose(avg[name], p - 0.5) or torch.allclose(avg[name], p)  # decay or warm-up copy


def test_compiled_unet_attaches_and_follows_weight_changes(monkeypatch):
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    _, unet = tiny_class_models(3)
    fn = CompiledUNet(unet, CPU)
    assert any(name.rsplit(".", 1)[-1].startswith(PREFIX) for name, _ in unet.named_buffers())
    torch.manual_seed(4)
    x, t, labels = torch.randn(2, 4, 4, 4), torch.tensor([5.0, 500.0]), torch.tensor([1, 2])
    with torch.no_grad():
        for block in unet.up_blocks:
            if block.upsample is not None:
                block.upsample.conv.weight.mul_(0.5)  # after attach: the cache is stale
        expected = unet(x, t, class_labels=labels)  # eager: the version check sees it
        got = fn(x, t, class_labels=labels)  # compiled: refresh() ran first
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert derived_weights.refresh(unet) == 0


def test_refresh_does_not_walk_the_modules(monkeypatch):
    """refresh runs before every compiled UNet call: walking the SD UNet's 643 modules took 6 ms
    of CPU a call (NOTES v11), so it looks only at the layers attach listed."""
    _, unet = tiny_class_models(3)
    assert attach(unet) > 0

    def walked(self):
        raise AssertionError("refresh walked the module tree")

    monkeypatch.setattr(torch.nn.Module, "modules", walked)
    assert refresh(unet) == 0
    with torch.no_grad():
        unet.up_blocks[0].upsample.conv.weight.mul_(0.5)
    assert refresh(unet) == 1  # and still sees a changed parameter
