"""Small random diffusers models, converted to ldmkit (and back), compute the same function."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.interop import (
    autoencoder_config_to_diffusers,
    autoencoder_from_diffusers,
    autoencoder_state_dict_to_diffusers,
    load_state_dict_strict,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    unet_from_diffusers,
    unet_state_dict_from_diffusers,
    unet_state_dict_to_diffusers,
)
from ldmkit.models.unet import UNet

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4


UNET2D_VARIANTS: dict[str, dict[str, Any]] = {
    "attention_and_classes": dict(
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=16, num_class_embeds=11,
    ),
    "scale_shift_single_head_shifted_freqs": dict(
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=None, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8,
        flip_sin_to_cos=False, freq_shift=1, time_embedding_dim=48,
    ),
}

COND_VARIANTS: dict[str, dict[str, Any]] = {
    "sd1_like": dict(attention_head_dim=4),
    "linear_projection_depth2_fixed_head_size": dict(
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=2,
    ),
    "projection_cond_vector": dict(
        attention_head_dim=2, class_embed_type="projection", projection_class_embeddings_input_dim=10,
    ),
}


def _unet2d(**kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=4, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, **kwargs,
    ).eval()


def _unet2d_condition(**kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, **kwargs,
    ).eval()


def _vae() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, norm_num_groups=8,
    ).eval()


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert theirs.std() > 1e-2  # a real signal, not a zero output that would match anything
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", UNET2D_VARIANTS)
def test_unet2d_parity_both_ways(variant: str) -> None:
    reference = _unet2d(**UNET2D_VARIANTS[variant])
    ours = unet_from_diffusers(reference.config, reference.state_dict()).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3.0, 817.5])
    labels = {"class_labels": torch.tensor([0, 10])} if ours.config.num_classes else {}
    with torch.no_grad():
        expected = reference(x, t, **labels).sample
        _close(ours(x, t, **labels), expected)
        # Back: ldmkit config and weights -> a fresh diffusers model computing the same function.
        name, kwargs = unet_config_to_diffusers(ours.config)
        assert name == "UNet2DModel"
        back = diffusers.UNet2DModel(**kwargs).eval()
        back.load_state_dict(unet_state_dict_to_diffusers(ours.state_dict(), cross_attention=False), strict=True)
        _close(back(x, t, **labels).sample, expected)


@pytest.mark.parametrize("variant", COND_VARIANTS)
def test_unet2d_condition_parity_both_ways(variant: str) -> None:
    reference = _unet2d_condition(**COND_VARIANTS[variant])
    ours = unet_from_diffusers(reference.config, reference.state_dict()).eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 1.0]), torch.randn(2, 5, 24)
    theirs_extra, ours_extra = {}, {}
    if ours.config.cond_dim is not None:
        vector = torch.randn(2, 10)
        theirs_extra, ours_extra = {"class_labels": vector}, {"cond": vector}
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context, **theirs_extra).sample
        _close(ours(x, t, context=context, **ours_extra), expected)
        name, kwargs = unet_config_to_diffusers(ours.config)
        assert name == "UNet2DConditionModel"
        back = diffusers.UNet2DConditionModel(**kwargs).eval()
        back.load_state_dict(unet_state_dict_to_diffusers(ours.state_dict(), cross_attention=True), strict=True)
        _close(back(x, t, encoder_hidden_states=context, **theirs_extra).sample, expected)


def test_autoencoder_parity_both_ways() -> None:
    reference = _vae()
    ours = autoencoder_from_diffusers(reference.config, reference.state_dict()).eval()
    # diffusers' scaling_factor becomes ldmkit's latent_scale buffer.
    torch.testing.assert_close(ours.latent_scale, torch.full((4,), 0.18215))
    images, latents = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        posterior = reference.encode(images).latent_dist
        _close(ours.encode_raw(images), posterior.mean)
        _close(ours.posterior(images).logvar, posterior.logvar)
        expected = reference.decode(latents).sample
        _close(ours.decode_raw(latents), expected)
        kwargs = autoencoder_config_to_diffusers(ours.config, ours.latent_shift, ours.latent_scale)
        back = diffusers.AutoencoderKL(**kwargs).eval()
        assert back.config.scaling_factor == pytest.approx(0.18215)
        back.load_state_dict(autoencoder_state_dict_to_diffusers(ours.state_dict()), strict=True)
        _close(back.decode(latents).sample, expected)


def test_the_attention_names_of_diffusers_before_0_14_load_as_diffusers_loads_them() -> None:
    """Hub VAEs such as stabilityai/sd-vae-ft-mse still store query/key/value/proj_attn; ldmkit
    refused them as missing to_q/to_k/to_v/to_out keys."""
    import re

    reference = _vae()
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {re.sub(r"(\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.",
                     lambda m: f"{m.group(1)}.{old_names[m.group(2)]}.", k): v
              for k, v in reference.state_dict().items()}
    assert any(".attentions.0.query." in k for k in legacy) and not any(".to_q." in k for k in legacy)
    ours = autoencoder_from_diffusers(reference.config, legacy).eval()
    latents = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        _close(ours.decode_raw(latents), reference.decode(latents).sample)


def test_strict_load_names_missing_unexpected_and_mismatched_keys() -> None:
    reference = _unet2d(**UNET2D_VARIANTS["attention_and_classes"])
    weights = unet_state_dict_from_diffusers(reference.state_dict())
    model = UNet(unet_config_from_diffusers(reference.config))
    missing = dict(weights)
    del missing["mid_block.attention.to_q.weight"]
    with pytest.raises(UserError, match=r"missing keys: mid_block\.attention\.to_q\.weight"):
        load_state_dict_strict(model, missing)
    with pytest.raises(UserError, match=r"unexpected keys: extra\.weight"):
        load_state_dict_strict(model, {**weights, "extra.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"shape mismatches.*conv_in\.bias"):
        load_state_dict_strict(model, {**weights, "conv_in.bias": torch.zeros(3)})
    with pytest.raises(UserError, match="unexpected keys"):
        unet_from_diffusers(reference.config, {**reference.state_dict(), "bogus.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "class_name,config",
    [
        ("UNet2DModel", dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D",) * 2,
                             up_block_types=("UpBlock2D",) * 2, downsample_type="resnet")),
        ("UNet2DModel", dict(block_out_channels=(32, 64), down_block_types=("DownBlock2D",) * 2,
                             up_block_types=("UpBlock2D",) * 2, time_embedding_type="fourier")),
        ("UNet2DModel", dict(block_out_channels=(32, 64), down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("AttnUpBlock2D", "UpBlock2D"))),  # attention on different levels
        ("UNet2DModel", dict(block_out_channels=(32, 48), down_block_types=("DownBlock2D",) * 2,
                             up_block_types=("UpBlock2D",) * 2)),  # 48 is not a multiple of 32
        ("UNet2DConditionModel", dict(block_out_channels=(32, 64), cross_attention_dim=8, addition_embed_type="text",
                                      down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)),
        ("VQModel", dict()),
    ],
)
def test_unsupported_diffusers_configs_raise(class_name: str, config: dict) -> None:
    with pytest.raises(UserError):
        unet_config_from_diffusers(config, class_name)


def test_a_unet2d_config_without_its_defaulted_keys_reads_as_diffusers_fills_them() -> None:
    """diffusers fills a missing attention_head_dim with 8 and in/out channels with 3 for
    UNet2DModel; ldmkit read one head per layer and 4 channels (same weight shapes, another function)."""
    from ldmkit.interop.diffusers_config import unet_config_from_diffusers

    full = dict(_unet2d(**UNET2D_VARIANTS["attention_and_classes"]).config)
    sparse = {k: v for k, v in full.items() if k not in ("attention_head_dim", "in_channels", "out_channels")}
    reference = diffusers.UNet2DModel.from_config(sparse)
    ours = unet_config_from_diffusers({**sparse, "_class_name": "UNet2DModel"})
    theirs = reference.config
    assert (ours.in_channels, ours.out_channels) == (theirs.in_channels, theirs.out_channels) == (3, 3)
    assert ours.head_dim == reference.config.attention_head_dim == 8
