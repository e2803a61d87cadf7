"""The cross-attentions' keys and values of a context, computed once per job (`nn/context_kv.py`):
the same function as projecting them at every call, never served for another context, and kept
current by `CompiledUNet` and the text pipeline."""

from __future__ import annotations

import torch

from ldmkit import compiled_unet
from ldmkit.compiled_unet import CompiledUNet
from ldmkit.models.unet import UNet, UNetConfig
from ldmkit.nn import context_kv
from ldmkit.nn.attention import CrossAttention

CPU = torch.device("cpu")


def _unet() -> UNet:
    torch.manual_seed(0)
    config = UNetConfig(in_channels=4, out_channels=4, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_levels=(0, 1), head_dim=8, norm_groups=4, zero_init_output=False,
                        context_dim=12, transformer_depth=2)
    return UNet(config).double().eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.tensor([10.0, 700.0], dtype=torch.float64), torch.randn(2, 5, 12, generator=g, dtype=torch.float64)


def _cross_layers(unet: UNet) -> list[CrossAttention]:
    return [m for m in unet.modules() if isinstance(m, CrossAttention) and m.is_cross]


def _forbid_projection(monkeypatch):
    project = CrossAttention.project_context

    def fail_for_cross(self, context):
        if self.is_cross:
            raise AssertionError("projected the context although its keys and values are cached")
        return project(self, context)  # self-attention: keys and values of x

    monkeypatch.setattr(CrossAttention, "project_context", fail_for_cross)


@torch.no_grad()
def test_cached_keys_and_values_are_the_same_function(monkeypatch):
    unet = _unet()
    x, t, context = _inputs()
    expected = unet(x, t, context=context)
    assert context_kv.refresh(unet, context)
    layers = _cross_layers(unet)
    assert len(layers) == 14  # 7 transformers (down 2, mid 1, up 4) of depth 2
    assert all(layer._context_k.shape == (2, 5, layer.to_k.out_features) for layer in layers)
    _forbid_projection(monkeypatch)
    torch.testing.assert_close(unet(x, t, context=context), expected, rtol=0, atol=0)


@torch.no_grad()
def test_another_or_changed_context_is_never_served_stale():
    unet = _unet()
    x, t, context = _inputs()
    context_kv.refresh(unet, context)
    other = torch.randn_like(context)
    torch.testing.assert_close(unet(x, t, context=other), _fresh(x, t, other))
    same_values = context.clone()  # equal numbers, another tensor: projected again, same result
    torch.testing.assert_close(unet(x, t, context=same_values), _fresh(x, t, context))
    context.mul_(2.0)  # in place after refresh: the version counter moved
    torch.testing.assert_close(unet(x, t, context=context), _fresh(x, t, context))


def _fresh(x, t, context):
    return _unet()(x, t, context=context)


def test_not_used_with_gradients_on():
    unet = _unet()
    x, t, context = _inputs()
    with torch.no_grad():
        context_kv.refresh(unet, context)
    unet(x, t, context=context).sum().backward()
    assert all(layer.to_k.weight.grad is not None for layer in _cross_layers(unet))


@torch.no_grad()
def test_refresh_is_in_place_once_per_context_and_detach_cleans_up():
    unet = _unet()
    _, _, context = _inputs()
    state = set(unet.state_dict())
    assert context_kv.refresh(unet, context)
    layer = _cross_layers(unet)[0]
    address = layer._context_k.data_ptr()
    assert not context_kv.refresh(unet, context)  # same tensor, same version: nothing to do
    other = torch.randn_like(context)
    assert context_kv.refresh(unet, other)
    assert layer._context_k.data_ptr() == address  # recomputed in place: CUDA graphs replay it
    torch.testing.assert_close(layer._context_k, layer.to_k(other))
    assert set(unet.state_dict()) == state  # non-persistent
    assert context_kv.refresh(unet, other[:1])  # another batch size: new buffers
    assert layer._context_k.shape[0] == 1
    assert not context_kv.refresh(unet, None)
    context_kv.detach(unet)
    assert not any(name.endswith("_context_k") for name, _ in unet.named_buffers())
    assert not hasattr(layer, "_context_kv_of")


@torch.no_grad()
def test_autocast_state_is_part_of_the_key():
    unet = _unet().float()
    context = _inputs()[2].float()
    context_kv.refresh(unet, context)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert context_kv.refresh(unet, context)  # same tensor, other precision: recomputed
        assert _cross_layers(unet)[0]._context_k.dtype == torch.bfloat16


def test_compiled_unet_refreshes_for_each_new_context(monkeypatch):
    monkeypatch.setattr(compiled_unet, "compile_options", lambda device: {"backend": "eager", "dynamic": False})
    unet = _unet()
    fn = CompiledUNet(unet, CPU)
    calls = []
    real = context_kv.refresh
    monkeypatch.setattr(context_kv, "refresh", lambda m, c: calls.append(real(m, c)) or calls[-1])
    x, t, context = _inputs()
    with torch.no_grad():
        first = fn(x, t, context=context)
        again = fn(x, t, context=context)
        other = torch.randn_like(context)
        changed = fn(x, t, context=other)  # the compiled graph cannot check: refresh must run
    assert calls == [True, False, True]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.testing.assert_close(first, _fresh(x, t, context))
    torch.testing.assert_close(changed, _fresh(x, t, other))


@torch.no_grad()
def test_refresh_walks_the_modules_once(monkeypatch):
    """refresh runs before every compiled UNet call; the module walk (6 ms of CPU on the SD UNet,
    NOTES v11) happens once, at the first."""
    unet = _unet()
    _, _, context = _inputs()
    context_kv.refresh(unet, context)

    def walked(self):
        raise AssertionError("refresh walked the module tree again")

    monkeypatch.setattr(torch.nn.Module, "modules", walked)
    assert not context_kv.refresh(unet, context)
    assert context_kv.refresh(unet, torch.randn_like(context))
