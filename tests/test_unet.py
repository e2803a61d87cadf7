"""UNet: shapes, conditioning, config round-trip, checkpointing, memory format, a tiny overfit."""

from __future__ import annotations

import json

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.models.presets import UNET_PRESETS
from ldmkit.models.unet import UNet, UNetConfig


def tiny(**overrides: object) -> UNetConfig:
    fields = dict(
        in_channels=3, out_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_levels=(1,), head_dim=8, norm_groups=4, zero_init_output=False,
    )
    fields.update(overrides)
    return UNetConfig(**fields)


VARIANTS = {
    "plain": (tiny(), {}),
    "class": (tiny(num_classes=5), {"class_labels": torch.tensor([0, 5])}),
    "cond": (tiny(cond_dim=7, resnet_scale_shift=True), {"cond": torch.randn(2, 7)}),
    "cross": (tiny(context_dim=12, num_heads=2, head_dim=None), {"context": torch.randn(2, 4, 12)}),
    "cross_linear": (
        tiny(context_dim=12, linear_projection=True, transformer_depth=2, attention_levels=(0, 1), out_channels=5),
        {"context": torch.randn(2, 4, 12)},
    ),
    "no_attention": (tiny(attention_levels=(), mid_attention=False, conv_resample=False, channel_mult=(1, 1, 2)), {}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_fp32_and_bf16(name: str) -> None:
    torch.manual_seed(0)
    config, kwargs = VARIANTS[name]
    model = UNet(config).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.0, 999.5])
    with torch.no_grad():
        out = model(x, t, **kwargs)
        assert out.shape == (2, config.out_channels, 8, 8) and out.dtype == torch.float32
        assert torch.isfinite(out).all() and out.abs().max() > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x, t, **kwargs)
    assert out_bf16.shape == out.shape and out_bf16.dtype == torch.bfloat16
    assert (out_bf16.float() - out).abs().max() < 0.1 * out.abs().max() + 0.05


def test_zero_init_output_and_odd_sizes() -> None:
    model = UNet(tiny(zero_init_output=True, channel_mult=(1, 2, 2)))
    out = model(torch.randn(1, 3, 10, 7), 5)  # odd sizes: 10x7 -> 5x4 -> 3x2 and back
    assert out.shape == (1, 3, 10, 7)
    assert out.abs().max() == 0


def test_conditioning_changes_output_and_null_class() -> None:
    torch.manual_seed(0)
    model = UNet(tiny(num_classes=4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        null = model(x, 10, class_labels=torch.tensor([4, 4]))
        torch.testing.assert_close(model(x, 10), null)  # None means the null class
        assert (model(x, 10, class_labels=torch.tensor([0, 1])) - null).abs().max() > 1e-4
        assert (model(x, 11) - null).abs().max() > 1e-5
    assert model.class_embed.num_embeddings == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"class_labels": torch.tensor([0, 1])},  # no class conditioning
        {"cond": torch.randn(2, 3)},  # no cond vector
        {"context": torch.randn(2, 3, 4)},  # no cross-attention
    ],
)
def test_unexpected_conditioning_raises(kwargs: dict) -> None:
    with pytest.raises(UserError):
        UNet(tiny())(torch.randn(2, 3, 8, 8), 1, **kwargs)


def test_missing_conditioning_and_bad_inputs_raise() -> None:
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match="context"):
        UNet(tiny(context_dim=6))(x, 1)
    with pytest.raises(UserError, match="cond"):
        UNet(tiny(cond_dim=6))(x, 1)
    with pytest.raises(UserError, match="shape"):
        UNet(tiny())(torch.randn(2, 4, 8, 8), 1)
    with pytest.raises(UserError):
        UNet(tiny())(x, torch.zeros(3))
    labelled = UNet(tiny(num_classes=3))
    with pytest.raises(UserError, match=r"class_labels must be ids in \[0, 3\] \(3: no class\), got \[-1, 11\]"):
        labelled(x, 1, class_labels=torch.tensor([11, -1]))  # was torch's "index out of range in self"
    with pytest.raises(UserError, match="class_labels must be an integer tensor of shape"):
        labelled(x, 1, class_labels=[1, 0])
    assert labelled(x, 1, class_labels=torch.tensor([3, 0])).shape == x.shape  # 3 is the null class


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_heads": 2},  # both heads fields set
        {"head_dim": None},  # neither
        {"attention_levels": (2,)},  # no level 2
        {"head_dim": 5},  # 32 channels not divisible by 5
        {"norm_groups": 3},
        {"num_classes": 0},
        {"channel_mult": ()},
        {"num_heads": 0, "head_dim": None},  # was a ZeroDivisionError
        {"head_dim": 2.5},
    ],
)
def test_invalid_configs_raise(overrides: dict) -> None:
    with pytest.raises(UserError):
        tiny(**overrides)


def test_config_json_round_trip() -> None:
    config = tiny(num_classes=10, context_dim=8, channel_mult=(1, 2, 3), attention_levels=(2, 1))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["channel_mult"] == [1, 2, 3]
    back = UNetConfig.from_dict(data)
    assert back == config and back.channel_mult == (1, 2, 3) and back.attention_levels == (1, 2)
    with pytest.raises(UserError, match="bogus"):
        UNetConfig.from_dict({**data, "bogus": 1})


def test_presets_take_overrides() -> None:
    config = UNET_PRESETS["tiny"](in_channels=4, num_classes=10)
    assert config.in_channels == 4 and config.num_classes == 10
    assert UNET_PRESETS["sd15"](head_dim=64).num_heads is None
    with pytest.raises(UserError):
        UNET_PRESETS["tiny"](not_a_field=1)


def _grads(model: UNet, x: torch.Tensor, ctx: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model(x, torch.tensor([3, 400]), context=ctx)
    (out**2).mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_same_gradients() -> None:
    torch.manual_seed(0)
    plain = UNet(tiny(context_dim=6))
    checkpointed = UNet(tiny(context_dim=6, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    x, ctx = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 6)
    calls = {"plain": 0, "checkpointed": 0}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        model.mid_block.resnet1.conv1.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    reference, got = _grads(plain, x, ctx), _grads(checkpointed, x, ctx)
    # Checkpointing really ran: the block's forward was recomputed during backward.
    assert calls == {"plain": 1, "checkpointed": 2}
    assert reference.keys() == got.keys() and len(got) == len(list(plain.parameters()))
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], atol=1e-6, rtol=1e-5)


def test_channels_last_same_output() -> None:
    torch.manual_seed(0)
    model = UNet(tiny(context_dim=6, num_classes=3)).eval()
    x, ctx, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 6), torch.tensor([0, 2])
    with torch.no_grad():
        reference = model(x, 7, class_labels=y, context=ctx)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last), 7, class_labels=y, context=ctx)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_tiny_unet_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = UNet(tiny(in_channels=2, out_channels=2, num_classes=3, zero_init_output=True))
    x, eps = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    t, y = torch.tensor([10, 200, 500, 900]), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (model(x, t, class_labels=y) - eps).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Zero-initialised output: the first loss is exactly the target's second moment.
    assert abs(losses[0] - eps.pow(2).mean().item()) < 1e-6
    assert min(losses[-5:]) < losses[0] / 10


def test_unet_runs_with_bf16_weights_without_autocast():
    """Inference keeps the weights in bf16 (no autocast): the fp32 timestep sinusoid must be cast."""
    config = UNET_PRESETS["tiny"](in_channels=4, num_classes=3, cond_dim=5)
    unet = UNet(config).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0])
    labels, cond = torch.tensor([0, 2]), torch.randn(2, 5)
    with torch.no_grad():
        ref = unet(x, t, class_labels=labels, cond=cond)
        out = unet.to(torch.bfloat16)(x.bfloat16(), t, class_labels=labels, cond=cond)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.isfinite(out).all()
