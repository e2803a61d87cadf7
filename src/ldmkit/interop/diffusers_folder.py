"""Reading diffusers folders: one model (`config.json` + weights) or a whole pipeline
(`model_index.json` with unet/, vae/, scheduler/, text_encoder/, tokenizer/ subfolders).

Weights are read from `diffusion_pytorch_model.safetensors` (or its shard index, or a single
variant such as `.fp16.safetensors`) and only then from `diffusion_pytorch_model.bin` through
`torch.load(weights_only=True)`. Only local files are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import UserError, reading
from ldmkit.interop.bundle import ModelBundle, sd_default_schedule
from ldmkit.interop.diffusers_scheduler import schedule_from_diffusers
from ldmkit.interop.loading import autoencoder_from_diffusers, unet_from_diffusers
from ldmkit.interop.weights_io import read_sharded_safetensors, read_weights
from ldmkit.json_text import read_json_file

WEIGHTS = "diffusion_pytorch_model"
EXPORT_INFO = "ldmkit.json"  # what diffusers' folders cannot hold (class names), from `ldm convert --to diffusers`
MODEL_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "AutoencoderKL")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json_file(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def _weights_of(folder: Path) -> dict[str, torch.Tensor]:
    for name in (f"{WEIGHTS}.safetensors", f"{WEIGHTS}.safetensors.index.json"):
        candidate = folder / name
        if candidate.is_file():
            return read_sharded_safetensors(candidate) if name.endswith(".json") else read_weights(candidate)
    variants = sorted(folder.glob(f"{WEIGHTS}.*.safetensors"))
    if len(variants) == 1:  # e.g. only the fp16 variant was downloaded: safetensors before a pickle file
        return read_weights(variants[0])
    if (folder / f"{WEIGHTS}.bin").is_file():
        return read_weights(folder / f"{WEIGHTS}.bin")
    raise UserError(
        f"{folder} holds no {WEIGHTS}.safetensors (or .bin)"
        + (f"; several variants ({', '.join(v.name for v in variants)}): keep one" if variants else "")
    )


def read_model(folder: Path, expect: tuple[str, ...] = MODEL_CLASSES) -> tuple[str, dict[str, Any], torch.nn.Module]:
    """(class name, config, ldmkit module) of a diffusers model folder holding one of `expect`."""
    config = read_json(folder / "config.json")
    name = config.get("_class_name")
    if name not in MODEL_CLASSES:
        raise UserError(f"{folder} holds a diffusers {name!r}; ldmkit converts {', '.join(MODEL_CLASSES)}")
    if name not in expect:  # a VAE's config in unet/: say so, not which UNet weights are missing
        raise UserError(f"{folder} holds a diffusers {name}, where its pipeline expects {' or '.join(expect)}")
    with reading(f"the {name} in {folder}"):
        weights = _weights_of(folder)
        if name == "AutoencoderKL":
            return name, config, autoencoder_from_diffusers(config, weights)
        return name, config, unet_from_diffusers(config, weights, name)


def read_model_folder(folder: Path) -> ModelBundle:
    """A bundle with the one model of a diffusers model folder."""
    name, config, module = read_model(folder)
    bundle = ModelBundle(source=f"diffusers {name} folder {folder}")
    if name == "AutoencoderKL":
        bundle.vae = module
        bundle.image_size = config.get("sample_size") if isinstance(config.get("sample_size"), int) else None
    else:
        bundle.unet = module
    return bundle


def _component(folder: Path, index: dict[str, Any], name: str) -> Path | None:
    """The subfolder of component `name`, None when the pipeline has none."""
    entry = index.get(name)
    listed = isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None
    if (folder / name).is_dir() and (listed or name not in index):
        return folder / name
    return None


def read_pipeline_folder(folder: Path) -> ModelBundle:
    """A bundle with a diffusers pipeline folder's UNet, VAE, schedule and CLIP text encoder."""
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    info = read_json(folder / EXPORT_INFO) if (folder / EXPORT_INFO).is_file() else {}
    kind = index.get("_class_name", "ldmkit export")
    bundle = ModelBundle(source=f"diffusers {kind} folder {folder}")
    unet_dir, vae_dir = _component(folder, index, "unet"), _component(folder, index, "vae")
    if unet_dir is None:
        raise UserError(f"{folder}: a pipeline folder needs a unet/ subfolder (this {kind} has none)")
    _, unet_config, bundle.unet = read_model(unet_dir, expect=("UNet2DModel", "UNet2DConditionModel"))
    if vae_dir is not None:
        _, _, bundle.vae = read_model(vae_dir, expect=("AutoencoderKL",))
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        with reading(scheduler):
            bundle.schedule, bundle.prediction, bundle.sampler_defaults = schedule_from_diffusers(read_json(scheduler))
    else:  # said and done (the note was said, and the bundle kept no schedule: an unusable file)
        bundle.schedule = sd_default_schedule()
        bundle.notes.append(f"{folder} has no scheduler/scheduler_config.json: using Stable Diffusion's schedule")
    text_dir, tokenizer_dir = _component(folder, index, "text_encoder"), _component(folder, index, "tokenizer")
    if text_dir is not None:
        entry = index.get("text_encoder") or [None, "CLIPTextModel"]
        if entry[1] != "CLIPTextModel":
            raise UserError(f"{folder}: text encoder {entry[1]!r} is not supported (only CLIPTextModel)")
        if tokenizer_dir is None:
            raise UserError(f"{folder} has text_encoder/ but no tokenizer/ folder")
        from ldmkit.text import CLIPTextEncoder

        with reading(f"the text encoder in {text_dir} and {tokenizer_dir}"):
            bundle.text_encoder = CLIPTextEncoder.from_folders(text_dir, tokenizer_dir)
    sample_size = unet_config.get("sample_size")
    if isinstance(sample_size, int) and bundle.vae is not None:
        bundle.image_size = sample_size * bundle.vae.config.downsample_factor
    bundle.image_size = info.get("image_size", bundle.image_size)
    bundle.class_names = list(info.get("class_names", []))
    return bundle
