"""A `ModelBundle` as an ldmkit inference file, and back.

The format is the one `ldmkit.train.inference_file` writes (safetensors, `unet.` / `vae.`
prefixed weights, JSON metadata), so a converted Stable Diffusion file loads wherever a trained
ldmkit model does. Converted files add:

    text_encoder.*            CLIP text encoder weights (transformers' own names)
    text_encoder_config       its `CLIPTextConfig` as JSON
    tokenizer_files           {file name: text} of the tokenizer folder (vocab.json, merges.txt, ...)
    sampler_defaults          sampler options implied by the source (timestep spacing, offset)
    source                    where the weights came from

Either of `unet_config` / `vae_config` may be null for a file holding one model only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ldmkit.diffusion import NoiseSchedule
from ldmkit.errors import UserError
from ldmkit.interop.bundle import ModelBundle
from ldmkit.interop.key_table import check_keys
from ldmkit.interop.weights_io import write_safetensors
from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig
from ldmkit.models.autoencoder import LATENT_BUFFERS
from ldmkit.models.fitted import build_fitted
from ldmkit.train.inference_file import FORMAT, FORMAT_VERSION, read_inference_metadata, resolve_inference_path

PREFIXES = {"unet": "unet.", "vae": "vae.", "text_encoder": "text_encoder."}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def write_ldmkit_file(path: str | os.PathLike, bundle: ModelBundle, *, dtype: str = "fp32") -> Path:
    """Write `bundle` as an ldmkit inference file; floating weights stored as `dtype`."""
    from ldmkit import __version__

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if bundle.unet is None and bundle.vae is None:
        raise UserError(f"{bundle.source} holds neither a UNet nor a VAE: nothing to write")
    tensors: dict[str, torch.Tensor] = {}
    for name, prefix in PREFIXES.items():
        module = getattr(bundle, name)
        if module is not None:
            state = module.parts()[1] if name == "text_encoder" else module.state_dict()
            for key, value in state.items():
                # The latent normalisation buffers stay fp32 whatever the weights' dtype.
                cast = value.is_floating_point() and key not in LATENT_BUFFERS
                tensors[prefix + key] = value.to(DTYPES[dtype]) if cast else value
    image_size = bundle.resolved_image_size()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ldmkit_version": __version__,
        "unet_config": None if bundle.unet is None else bundle.unet.config.to_dict(),
        "vae_config": None if bundle.vae is None else bundle.vae.config.to_dict(),
        "prediction": bundle.prediction,
        "image_size": image_size,
        "channels": None if bundle.vae is None else bundle.vae.config.in_channels,
        "class_names": list(bundle.class_names),
        "schedule": None if bundle.schedule is None else bundle.schedule.to_dict(),
        "sampler_defaults": dict(bundle.sampler_defaults),
        "source": bundle.source,
        "step": bundle.extra.get("step"),
        "run_config": bundle.extra.get(
            "run_config", {"image_size": image_size, "diffusion": {"prediction": bundle.prediction}}
        ),
    }
    meta.update({k: v for k, v in bundle.extra.items() if k not in meta})
    if bundle.text_encoder is not None:
        config, _, tokenizer_files = bundle.text_encoder.parts()
        meta["text_encoder_config"] = config
        meta["tokenizer_files"] = tokenizer_files
    path = Path(path)
    write_safetensors(path, tensors, {k: json.dumps(v) for k, v in meta.items()})
    return path


def _module_weights(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def read_ldmkit_file(path: str | os.PathLike) -> ModelBundle:
    """A bundle from an ldmkit inference file or run folder (trained or converted)."""
    path = resolve_inference_path(path, require_unet=False)
    meta = read_inference_metadata(path)
    if meta.get("unet_config") is None and meta.get("vae_config") is None:
        raise UserError(f"{path} holds neither a UNet nor a VAE (both configs are empty): the file is damaged")
    weights = load_file(str(path), device="cpu")
    stray = [k for k in weights if not k.startswith(tuple(PREFIXES.values()))]
    if stray:
        check_keys(stray, [], f"{path}")
    bundle = ModelBundle(
        prediction=meta.get("prediction", "eps"),
        sampler_defaults=dict(meta.get("sampler_defaults") or {}),
        class_names=list(meta.get("class_names") or []),
        image_size=meta.get("image_size"),
        source=meta.get("source") or f"ldmkit file {path}",
        schedule=None if meta.get("schedule") is None else NoiseSchedule.from_dict(meta["schedule"]),
    )
    known = {"format", "format_version", "ldmkit_version", "unet_config", "vae_config", "prediction", "image_size",
             "channels", "class_names", "schedule", "sampler_defaults", "source", "text_encoder_config",
             "tokenizer_files"}
    bundle.extra = {k: v for k, v in meta.items() if k not in known}
    if meta.get("unet_config") is not None:
        unet_config = UNetConfig.from_dict(meta["unet_config"])
        bundle.unet = build_fitted(lambda: UNet(unet_config), _module_weights(weights, "unet."),
                                   source=f"{path}: the unet.* weights")
    if meta.get("vae_config") is not None:
        vae_config = AutoencoderKLConfig.from_dict(meta["vae_config"])
        bundle.vae = build_fitted(lambda: AutoencoderKL(vae_config), _module_weights(weights, "vae."),
                                  source=f"{path}: the vae.* weights")
    text = _module_weights(weights, "text_encoder.")
    if text or meta.get("text_encoder_config") is not None:
        if meta.get("text_encoder_config") is None or not meta.get("tokenizer_files"):
            raise UserError(f"{path}: text_encoder.* weights need text_encoder_config and tokenizer_files metadata")
        from ldmkit.text import CLIPTextEncoder

        bundle.text_encoder = CLIPTextEncoder.from_parts(meta["text_encoder_config"], text, meta["tokenizer_files"])
    for module in (bundle.unet, bundle.vae, bundle.text_encoder):
        if module is not None:
            module.eval()
    return bundle
