"""Reading a CompVis / Stable Diffusion single-file checkpoint (`.safetensors`, or `.ckpt`
through `torch.load(weights_only=True)`) into a `ModelBundle`.

Key groups of a `LatentDiffusion` state dict:

    model.diffusion_model.*            the UNet
    model_ema.*                        its EMA copy, names flattened without dots (LitEma), plus
                                       model_ema.decay / model_ema.num_updates
    first_stage_model.*                the KL autoencoder (its training-only loss.* is skipped)
    cond_stage_model.transformer.*     the CLIP text encoder (transformers' CLIPTextModel)
    betas, alphas_cumprod, ...         the training schedule as buffers

A lone autoencoder checkpoint (encoder.*, decoder.*, e.g. the SD VAE fine-tunes) is read too.
Any other key is an error naming it: nothing is dropped without a word.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ldmkit.diffusion import NoiseSchedule
from ldmkit.errors import UserError, reading
from ldmkit.interop import compvis_unet, compvis_vae
from ldmkit.interop.bundle import ModelBundle, sd_default_schedule
from ldmkit.interop.key_table import check_keys
from ldmkit.interop.weights_io import read_weights
from ldmkit.models import AutoencoderKL, UNet
from ldmkit.models.fitted import build_fitted

UNET, EMA, VAE, TEXT = "model.diffusion_model.", "model_ema.", "first_stage_model.", "cond_stage_model.transformer."
SD_SCALING_FACTOR = 0.18215
# Buffers LatentDiffusion registers (ldm/models/diffusion/ddpm.py: register_schedule, scale_factor).
_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar", "scale_factor",
}
_STANDALONE_VAE = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# SD 2.x's OpenCLIP text encoder: not loaded (its UNet and VAE convert without it)
OPENCLIP = "cond_stage_model.model."
Groups = dict[str, dict[str, torch.Tensor]]  # unet, ema, vae, text, openclip, buffers: key -> tensor


def _ema_name(unet_key: str) -> str:
    """LitEma's buffer name for a UNet weight: the module path without its dots."""
    return EMA + ("diffusion_model." + unet_key).replace(".", "")


def _schedule_from_betas(betas: torch.Tensor) -> NoiseSchedule:
    """The named schedule these (float32-stored) betas come from, else a custom one."""
    betas = betas.double()
    n = betas.numel()
    # CompVis' "linear" (ldm/modules/diffusionmodules/util.py, make_beta_schedule) spaces sqrt(beta)
    # evenly: ldmkit's (and diffusers') scaled_linear. SD's range, then the LDM paper's and DDPM's.
    candidates = (("scaled_linear", 0.00085, 0.012), ("scaled_linear", 0.0015, 0.0195),
                  ("scaled_linear", 1e-4, 0.02), ("linear", 1e-4, 0.02))
    for kind, start, end in candidates:
        named = NoiseSchedule.create(kind, n, beta_start=start, beta_end=end)
        if torch.allclose(named.betas, betas, rtol=1e-6, atol=0):
            return named
    return NoiseSchedule(betas)


def _partition(weights: dict[str, torch.Tensor]) -> Groups:
    groups: Groups = {"unet": {}, "ema": {}, "vae": {}, "text": {}, "openclip": {}, "buffers": {}}
    unknown = []
    standalone_vae = not any(k.startswith((UNET, VAE)) for k in weights)
    for key, value in weights.items():
        if key.startswith(UNET):
            groups["unet"][key[len(UNET):]] = value
        elif key.startswith(EMA):
            groups["ema"][key] = value
        elif key.startswith(VAE) and not key.startswith(VAE + "loss."):
            groups["vae"][key[len(VAE):]] = value
        elif key.startswith(TEXT):
            groups["text"][key[len(TEXT):]] = value
        elif key.startswith(OPENCLIP):
            groups["openclip"][key] = value
        elif key in _BUFFERS:
            groups["buffers"][key] = value
        elif standalone_vae and key.startswith(_STANDALONE_VAE):
            groups["vae"][key] = value
        elif not key.startswith((VAE + "loss.", "loss.")):  # autoencoder training losses (LPIPS, GAN)
            unknown.append(key)
    if not groups["unet"] and not groups["vae"]:  # first: a file of something else is not "a layout problem"
        raise UserError(
            "not a CompVis / Stable Diffusion checkpoint (nor an ldmkit model file): no model.diffusion_model.* "
            "or first_stage_model.* weights"
        )
    if unknown:
        check_keys(unknown, [], "CompVis checkpoint")
    return groups


def _pick_unet_weights(groups: Groups, use_ema: bool | None) -> tuple[dict[str, torch.Tensor], bool]:
    """The UNet weights to use and whether they are the EMA copy (preferred when present)."""
    ema = {k: v for k, v in groups["ema"].items() if k not in (EMA + "decay", EMA + "num_updates")}
    if use_ema is False or (use_ema is None and not ema):
        return groups["unet"], False
    if not ema:
        raise UserError("EMA weights were asked for, but this checkpoint has no model_ema.* weights")
    names = {k: _ema_name(k) for k in groups["unet"]}
    check_keys(list(ema), list(names.values()), "CompVis EMA (model_ema.*)")
    return {k: ema[name] for k, name in names.items()}, True


def read_compvis_checkpoint(
    path: str | os.PathLike,
    *,
    use_ema: bool | None = None,
    tokenizer: str | os.PathLike | None = None,
    num_heads: int | None = None,
    head_dim: int | None = None,
    prediction: str | None = None,
    scaling_factor: float | None = None,
    image_size: int | None = None,
    norm_groups: int | None = None,
) -> ModelBundle:
    """A bundle from a CompVis / SD checkpoint.

    Args:
        use_ema: True: the EMA UNet (error if absent); False: the raw one; None: EMA when present.
        tokenizer: a CLIP tokenizer folder (vocab.json + merges.txt, or tokenizer.json); the checkpoint
            stores none, so without it the text encoder is left out (noted in `bundle.notes`).
        num_heads, head_dim: the UNet's attention split (not stored in weights; SD's by default).
        prediction: "eps" (SD 1.x, SD 2.x-base) or "v" (SD 2.x 768-v); not stored in weights.
        scaling_factor: the latent scale (the checkpoint's scale_factor, else SD's 0.18215).
        image_size: the native image size (default 64 latent pixels, 512 for SD).
        norm_groups: GroupNorm groups of both models (not stored in weights; None: CompVis' 32).
    """
    path = Path(path)
    norm_groups = 32 if norm_groups is None else norm_groups  # None is "the default", as for every other option
    weights = read_weights(path)
    with reading(f"the CompVis checkpoint {path}"):  # tensors of unexpected ranks: KeyError, ValueError inside
        return _bundle_from_compvis(path, weights, use_ema=use_ema, tokenizer=tokenizer, num_heads=num_heads,
                                    head_dim=head_dim, prediction=prediction, scaling_factor=scaling_factor,
                                    image_size=image_size, norm_groups=norm_groups)


def _bundle_from_compvis(path: Path, weights: dict[str, Any], *, use_ema: bool | None, tokenizer: Any,
                         num_heads: int | None, head_dim: int | None, prediction: str | None,
                         scaling_factor: float | None, image_size: int | None, norm_groups: int) -> ModelBundle:
    groups = _partition(weights)
    if not groups["unet"]:  # they were dropped without a word, as --tokenizer once was
        options = (("--ema/--no-ema (use_ema)", use_ema), ("--num-heads", num_heads), ("--head-dim", head_dim),
                   ("--prediction", prediction))
        unused = [flag for flag, value in options if value is not None]
        if unused:
            raise UserError(f"{path} holds no UNet, so {', '.join(unused)} has nothing to apply to: leave it out")
    bundle = ModelBundle(source=f"CompVis checkpoint {path}", prediction=prediction or "eps", image_size=image_size)
    if groups["unet"]:
        weights, is_ema = _pick_unet_weights(groups, use_ema)
        config = compvis_unet.unet_config_from_compvis(weights, num_heads=num_heads, head_dim=head_dim,
                                                     norm_groups=norm_groups)
        unet_weights = compvis_unet.unet_state_dict_from_compvis(weights, config)
        bundle.unet = build_fitted(lambda: UNet(config), unet_weights, source="CompVis UNet weights")
        bundle.notes.append(f"UNet: {'EMA' if is_ema else 'non-EMA'} weights")
    if groups["vae"]:
        config = compvis_vae.vae_config_from_compvis(groups["vae"], norm_groups=norm_groups)
        if scaling_factor is None:
            stored = groups["buffers"].get("scale_factor")
            scaling_factor = float(stored) if stored is not None else SD_SCALING_FACTOR
        weights = compvis_vae.vae_state_dict_from_compvis(groups["vae"], config, scaling_factor)
        bundle.vae = build_fitted(lambda: AutoencoderKL(config), weights, source="CompVis autoencoder weights")
    if groups["unet"]:
        betas = groups["buffers"].get("betas")
        bundle.schedule = _schedule_from_betas(betas) if betas is not None else sd_default_schedule()
        # CompVis samples with DDIM's "uniform" (leading) steps offset by one, as SD's PNDM config does.
        bundle.sampler_defaults = {"spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
    if groups["text"]:
        _add_text_encoder(bundle, groups["text"], tokenizer)
    elif groups["openclip"]:
        if tokenizer is not None:
            raise UserError(f"{path} holds SD 2.x's OpenCLIP text encoder, which ldmkit does not load, so a CLIP "
                            "tokenizer has nothing to go with: leave --tokenizer out (the UNet and VAE convert)")
        bundle.notes.append("text encoder left out: SD 2.x's OpenCLIP text encoder (cond_stage_model.model.*) "
                            "is not supported; the UNet and VAE are converted")
    elif tokenizer is not None:  # it was ignored, silently
        raise UserError(f"{path} holds no text encoder, so a tokenizer has nothing to go with: leave --tokenizer out")
    return bundle


def _add_text_encoder(bundle: ModelBundle, weights: dict[str, Any], tokenizer: str | os.PathLike | None) -> None:
    if tokenizer is None:
        bundle.notes.append(
            "text encoder left out: a CompVis checkpoint stores no tokenizer; pass a CLIP tokenizer folder "
            "(e.g. the tokenizer/ folder of a diffusers SD 1.x download) with --tokenizer"
        )
        return
    from ldmkit.text import CLIPTextEncoder, clip_config_from_weights, read_tokenizer_files

    config = clip_config_from_weights(weights)
    bundle.text_encoder = CLIPTextEncoder.from_parts(config, weights, read_tokenizer_files(tokenizer))
