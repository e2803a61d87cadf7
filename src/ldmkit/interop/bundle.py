"""`ModelBundle`: everything a generation needs, whatever file or folder it came from.

Sources, told apart by what they contain (`load_bundle`):

    ldmkit run folder / inference .safetensors    (ldmkit metadata in the file)
    diffusers pipeline folder                     model_index.json, unet/, vae/, scheduler/, text_encoder/, tokenizer/
    diffusers model folder                        config.json + diffusion_pytorch_model.safetensors (or .bin)
    ldmkit export for diffusers                   unet/, vae/, scheduler/ and ldmkit.json (no text encoder)
    CompVis / Stable Diffusion single file        .safetensors or .ckpt with model.diffusion_model.*,
                                                  first_stage_model.*, cond_stage_model.transformer.*
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldmkit.diffusion import NoiseSchedule
from ldmkit.diffusion.parameterization import PREDICTIONS
from ldmkit.errors import UserError
from ldmkit.models import AutoencoderKL, UNet
from ldmkit.pretrained import resolve_model_source
from ldmkit.run_files import MODEL_FILES, run_file_message, unfinished_run_message

COMPONENTS = ("unet", "vae", "text_encoder")


def sd_default_schedule() -> NoiseSchedule:
    """Stable Diffusion's training schedule (scaled_linear, 0.00085 -> 0.012, 1000 steps)."""
    return NoiseSchedule.create("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)


@dataclass
class ModelBundle:
    """Modules and settings of one model. Any module may be None (a lone UNet or VAE).

    `sampler_defaults` are sampler options implied by the source (diffusers' timestep_spacing,
    steps_offset, set_alpha_to_one); `notes` are things the user should hear about the
    conversion (e.g. a text encoder left out for want of a tokenizer).
    """

    unet: UNet | None = None
    vae: AutoencoderKL | None = None
    text_encoder: nn.Module | None = None
    schedule: NoiseSchedule | None = None
    prediction: str = "eps"
    sampler_defaults: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    image_size: int | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def components(self) -> list[str]:
        """Names of the modules present."""
        return [name for name in COMPONENTS if getattr(self, name) is not None]

    def resolved_image_size(self) -> int | None:
        """`image_size`, else 64 latent pixels times the VAE's factor (SD 1.x: 512)."""
        if self.image_size is not None:
            return self.image_size
        return None if self.vae is None else 64 * self.vae.config.downsample_factor


def is_ldmkit_file(path: Path) -> bool:
    """Whether `path` is a .safetensors file that ldmkit wrote (its metadata says so)."""
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "ldmkit" in (f.metadata() or {}).get("format", "")
    except Exception:  # not a safetensors file at all: read_weights explains later
        return False


def load_bundle(path: str | os.PathLike, *, check: bool = True, **options: Any) -> ModelBundle:
    """Read any supported model file or folder into a `ModelBundle`.

    `path` may also name a bundled model ("emoji", "fashion-mnist": `ldmkit.pretrained`) when no
    file or folder of that name exists. `options` go to the CompVis reader (`use_ema`, `tokenizer`,
    `num_heads`, `head_dim`, `prediction`, `scaling_factor`, `image_size`, `norm_groups`); other
    sources take only `image_size` and `prediction`, which override what the source says.
    `check=False` skips `check_bundle` (`ldm info` describes a model it would refuse to run).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"a model is a file or folder path, or a bundled model's name; got {type(path).__name__}")
    bundle = _read_bundle(path, **options)
    return check_bundle(bundle, where=path) if check else bundle


def _read_bundle(path: str | os.PathLike, **options: Any) -> ModelBundle:
    from ldmkit.interop import compvis_checkpoint, diffusers_folder, ldmkit_file

    asked = path
    path = Path(resolve_model_source(path))
    # A bundled name is named as such, not by the path its file was built at.
    source = f"the bundled model {str(asked).lower()!r}" if path != Path(asked) else None
    not_a_model = unfinished_run_message(path) or run_file_message(path)
    if not_a_model:
        raise UserError(not_a_model)
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / diffusers_folder.EXPORT_INFO).is_file():
            bundle = diffusers_folder.read_pipeline_folder(path)
        elif any((path / name).is_file() for name in MODEL_FILES):  # before config.json: runs have one
            bundle = ldmkit_file.read_ldmkit_file(path)
        elif (path / "config.json").is_file():
            bundle = diffusers_folder.read_model_folder(path)
        else:
            raise UserError(
                f"{path} is not a model folder ldmkit knows: expected an ldmkit run folder (model.safetensors), "
                "a diffusers pipeline folder (model_index.json, unet/, vae/, ...) or a diffusers model "
                "folder (config.json + diffusion_pytorch_model.safetensors)"
            )
        return _override(bundle, options, allowed=("image_size", "prediction"), source=source)
    if not path.exists():
        raise UserError(f"no such model file or folder: {path}")
    if not path.is_file():  # a FIFO or a device: opening it to read would wait for ever
        raise UserError(f"{path} is neither a file nor a folder")
    if is_ldmkit_file(path):
        return _override(ldmkit_file.read_ldmkit_file(path), options, allowed=("image_size", "prediction"),
                         source=source)
    unknown = sorted(set(options) - set(COMPVIS_OPTIONS))
    if unknown:
        raise UserError(f"unknown loading option {', '.join(unknown)}; a CompVis checkpoint takes "
                        f"{', '.join(COMPVIS_OPTIONS)}")
    return compvis_checkpoint.read_compvis_checkpoint(path, **options)


MAX_IMAGE_SIZE = 16384  # pixels a side; a typo of 100000 asked generation for 40 GB at once


def check_bundle(bundle: ModelBundle, where: str | os.PathLike | None = None) -> ModelBundle:
    """`UserError` for settings no model can generate with, whether the source said them or an
    option did (`--scaling-factor 0` wrote a file whose images were all black, `--image-size
    15` one whose images came out 14 px, `prediction="bogus"` one that could not generate).
    `where`: the path the bundle was read from, named in the message (a file's stored `source`
    can be the path it was converted from, on another machine)."""
    try:
        return _check_settings(bundle)
    except UserError as err:
        if where is None:
            raise
        raise UserError(f"{where}: {err}") from None


def _check_settings(bundle: ModelBundle) -> ModelBundle:
    size = bundle.image_size
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_IMAGE_SIZE:
            raise UserError(f"the image size must be a whole number from 1 to {MAX_IMAGE_SIZE}, got {size!r}")
        factor = bundle.vae.config.downsample_factor if bundle.vae is not None else 1
        if size % factor:
            raise UserError(f"the image size {size} is not a multiple of the VAE's factor {factor} (try "
                            f"{max(factor, size // factor * factor)}; `ldm convert ... --image-size N` rewrites it)")
    if bundle.prediction not in PREDICTIONS:
        raise UserError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {bundle.prediction!r}")
    if bundle.vae is not None:
        scale = bundle.vae.latent_scale
        if not bool(torch.isfinite(scale).all()) or bool((scale == 0).any()):
            shown = [round(v, 6) for v in scale.tolist()]
            raise UserError(f"the latent scale must be finite and non-zero, got {shown} (SD's is 0.18215)")
    if bundle.unet is not None and bundle.vae is not None:
        unet, latent = bundle.unet.config, bundle.vae.config.latent_channels
        if (unet.in_channels, unet.out_channels) != (latent, latent):  # else found only at the first image
            kind = " (a 9-channel inpainting UNet, which ldmkit does not support)" if unet.in_channels == 9 else ""
            raise UserError(f"the UNet takes {unet.in_channels} and gives {unet.out_channels} channels, but the "
                            f"VAE's latents have {latent}{kind}")
    return bundle


# `read_compvis_checkpoint`'s keyword options, which other sources refuse.
COMPVIS_OPTIONS = ("use_ema", "tokenizer", "num_heads", "head_dim", "prediction", "scaling_factor", "image_size",
                   "norm_groups")


def _override(bundle: ModelBundle, options: dict[str, Any], allowed: tuple[str, ...],
              source: str | None = None) -> ModelBundle:
    bundle.source = source or bundle.source
    given = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    unknown = [k for k in given if k not in COMPVIS_OPTIONS]
    if unknown:
        only_compvis = [k for k in COMPVIS_OPTIONS if k not in allowed]  # each option named once
        raise UserError(f"unknown loading option {', '.join(unknown)}; the options are {', '.join(allowed)} and, for "
                        f"CompVis single-file checkpoints, {', '.join(only_compvis)}")
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UserError(f"{', '.join(given)} {verb} only to CompVis single-file checkpoints, not {bundle.source}")
    for key in allowed:
        if options.get(key) is not None:
            setattr(bundle, key, options[key])
    return bundle


def load_model(path: str | os.PathLike, component: str | None = None, **options: Any) -> nn.Module:
    """The ldmkit module (`UNet`, `AutoencoderKL` or the CLIP text encoder) stored at `path`.

    `component` ("unet", "vae", "text_encoder") picks one when the source holds several;
    without it, a source holding exactly one module returns that one.
    """
    bundle = load_bundle(path, **options)
    present = bundle.components
    if component is None:
        if len(present) != 1:
            raise UserError(f"{path} holds {', '.join(present)}: pass component= one of them")
        component = present[0]
    if component not in COMPONENTS:
        raise UserError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")
    module = getattr(bundle, component)
    if module is None:
        raise UserError(f"{path} holds no {component} (it holds {', '.join(present) or 'nothing'})")
    return module
