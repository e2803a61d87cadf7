"""Writing a `ModelBundle` as a diffusers folder that `from_pretrained` loads.

    UNet + VAE (+ CLIP)   a pipeline folder: unet/, vae/, scheduler/ (a DDIMScheduler config),
                          and with a text encoder text_encoder/, tokenizer/ and a
                          StableDiffusionPipeline model_index.json
    one model             a model folder: config.json + diffusion_pytorch_model.safetensors

`ldmkit.json` keeps what diffusers' configs cannot (class names, the image size), so
ldmkit -> diffusers -> ldmkit gives back the same bundle. Weights are renamed, never recomputed.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from ldmkit.atomic import atomic_write_text
from ldmkit.errors import UserError
from ldmkit.interop.bundle import ModelBundle
from ldmkit.interop.diffusers_config import autoencoder_config_to_diffusers, unet_config_to_diffusers
from ldmkit.interop.diffusers_folder import EXPORT_INFO, WEIGHTS
from ldmkit.interop.diffusers_keys import autoencoder_state_dict_to_diffusers, unet_state_dict_to_diffusers
from ldmkit.interop.diffusers_scheduler import schedule_to_diffusers
from ldmkit.interop.weights_io import write_safetensors


def _diffusers_version() -> str:
    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return "0.30.0"  # any version that reads these configs; diffusers only warns on a mismatch


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_unet(folder: Path, bundle: ModelBundle) -> None:
    unet = bundle.unet
    name, config = unet_config_to_diffusers(unet.config)
    image_size = bundle.resolved_image_size()
    if image_size is not None and bundle.vae is not None:
        config["sample_size"] = image_size // bundle.vae.config.downsample_factor
    _write_json(folder / "config.json", {"_class_name": name, "_diffusers_version": _diffusers_version(), **config})
    weights = unet_state_dict_to_diffusers(unet.state_dict(), cross_attention=unet.config.context_dim is not None)
    write_safetensors(folder / f"{WEIGHTS}.safetensors", weights, {"format": "pt"})


def _write_vae(folder: Path, bundle: ModelBundle) -> None:
    vae = bundle.vae
    config = autoencoder_config_to_diffusers(vae.config, vae.latent_shift, vae.latent_scale)
    if bundle.image_size is not None:
        config["sample_size"] = bundle.image_size
    header = {"_class_name": "AutoencoderKL", "_diffusers_version": _diffusers_version()}
    _write_json(folder / "config.json", {**header, **config})
    weights = autoencoder_state_dict_to_diffusers(vae.state_dict())
    write_safetensors(folder / f"{WEIGHTS}.safetensors", weights, {"format": "pt"})


def _write_text_encoder(folder: Path, bundle: ModelBundle) -> None:
    config, weights, tokenizer_files = bundle.text_encoder.parts()
    _write_json(folder / "text_encoder" / "config.json", {**config, "architectures": ["CLIPTextModel"]})
    write_safetensors(folder / "text_encoder" / "model.safetensors", weights, {"format": "pt"})
    for name, text in tokenizer_files.items():
        atomic_write_text(folder / "tokenizer" / name, text)


def _model_index(with_text: bool) -> dict[str, Any]:
    none = [None, None]
    index: dict[str, Any] = {
        "_diffusers_version": _diffusers_version(),
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if with_text:
        index.update(
            _class_name="StableDiffusionPipeline", text_encoder=["transformers", "CLIPTextModel"],
            tokenizer=["transformers", "CLIPTokenizer"], safety_checker=none, feature_extractor=none,
            image_encoder=none, requires_safety_checker=False,
        )
    return index


def write_diffusers_folder(folder: str | os.PathLike, bundle: ModelBundle) -> Path:
    """Write `bundle` under `folder` (created; existing files of the same names are replaced)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    present = bundle.components
    if present == ["unet"]:
        _write_unet(folder, bundle)
        return folder
    if present == ["vae"]:
        _write_vae(folder, bundle)
        return folder
    if bundle.unet is None or bundle.vae is None:
        raise UserError(
            f"{bundle.source}: a diffusers pipeline folder needs a UNet and a VAE (have {', '.join(present)})"
        )
    _write_unet(folder / "unet", bundle)
    _write_vae(folder / "vae", bundle)
    if bundle.schedule is not None:
        _write_json(folder / "scheduler" / "scheduler_config.json",
                    {**schedule_to_diffusers(bundle.schedule, bundle.prediction, bundle.sampler_defaults),
                     "_diffusers_version": _diffusers_version()})
    with_text = bundle.text_encoder is not None
    if with_text:
        _write_text_encoder(folder, bundle)
    if with_text and bundle.unet.config.context_dim is not None:
        _write_json(folder / "model_index.json", _model_index(True))
    _write_json(folder / EXPORT_INFO, {"format": "ldmkit-diffusers-export", "class_names": list(bundle.class_names),
                                       "image_size": bundle.resolved_image_size()})
    return folder
