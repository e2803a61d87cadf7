"""What a caller hands `LatentDiffusionPipeline`, checked where it comes in: counts and seeds (any
integer type, never a float or a bool), the networks' dtype (a torch dtype or its name), class
names against the UNet's class table, and start images (a PIL image or a path). Each mistake is
a `UserError` that names the argument, not a TypeError from deep inside torch or PIL."""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ldmkit.data.decode import quiet_large_images
from ldmkit.errors import UserError
from ldmkit.models import UNet


DEFAULT_STRENGTH = 0.75  # img2img; inpainting redraws its masked part from noise (strength 1)
TEXT_ENCODER_LAYOUT = (
    "a diffusers pipeline folder with text_encoder/ (config.json, model.safetensors) and tokenizer/ "
    "(vocab.json, merges.txt), or a file made by `ldm convert` from one (or from a CompVis checkpoint "
    "with --tokenizer DIR)"
)


def default_strength(masked: bool) -> float:
    """The strength a start image gets when none is given: 1 with a mask, else DEFAULT_STRENGTH."""
    return 1.0 if masked else DEFAULT_STRENGTH


def whole_number(value: Any, what: str) -> int:
    """`value` as an int (numpy's integers too), or a `UserError` naming `what`: `2.5` images or a
    seed of `True` are mistakes, not numbers to round."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{what} must be a whole number, got {value!r}") from None


def real_number(value: Any, what: str) -> float:
    """`value` as a float (numpy's numbers and 0-d tensors too), or a `UserError` naming `what`:
    a string or a bool is a mistake, not a number."""
    if isinstance(value, (str, bytes, bool)):
        raise UserError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one value
        raise UserError(f"{what} must be a number, got {value!r}") from None


DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16, "fp64": torch.float64,
                "float64": torch.float64}


def network_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The networks' dtype: a floating-point torch dtype, or its name ("bf16", "float16", ...)."""
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    raise UserError(f"dtype must be a floating-point torch dtype or one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")


def class_names_for(unet: UNet, names: Sequence[str]) -> list[str]:
    """The names of `unet`'s classes: as given, or "0".."n-1" for a class-conditional UNet given
    none. Their count is the UNet's `num_classes`, whose id is the null class that guidance uses."""
    count = unet.config.num_classes or 0
    if isinstance(names, str):
        raise UserError(f"class_names must be a list of names, got the string {names!r}")
    names = [str(name) for name in names] or [str(k) for k in range(count)]
    if len(names) != count:
        raise UserError(f"{len(names)} class names for a UNet with {count} classes (num_classes="
                        f"{unet.config.num_classes}): give one name per class, in id order")
    return names


def check_strength(strength: Any, steps: int) -> float:
    """img2img's strength as a float in (0, 1] that runs at least one of `steps` (int(steps x
    strength), as diffusers counts): 0.1 of 5 steps ran none and returned the autoencoder's copy
    of the start image as if it had been generated."""
    strength = real_number(strength, "strength")  # numpy's and torch's numbers too
    if not 0 < strength <= 1:
        raise UserError(f"strength must be in (0, 1], got {strength!r}")
    if int(steps * strength) < 1:
        raise UserError(f"strength {strength} of {steps} steps runs no step (int(steps x strength) = 0): "
                        f"raise the strength to at least {math.ceil(1000 / steps) / 1000}, or the steps")
    return strength


def open_image(image: Image.Image | str | Path, what: str = "image") -> Image.Image:
    """A PIL image as given, or read from a path, upright (its EXIF orientation applied, as the
    training data's: a mask drawn on the photo as it is shown fits it); `UserError` naming `what`
    if it cannot be read."""
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image)
    if not isinstance(image, (str, os.PathLike)):
        raise UserError(f"{what} must be a PIL image or a file path, got {type(image).__name__} (a [C, H, W] "
                        "tensor, uint8 or in [-1, 1], becomes one with ldmkit.data.images.to_pil(t)[0])")
    path = Path(image)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give an image file")
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        with quiet_large_images(), Image.open(path) as opened:  # its size is checked where it is used
            opened.load()
            return ImageOps.exif_transpose(opened)  # a copy (with the orientation tag dropped when applied)
    except Image.DecompressionBombError as err:
        raise UserError(f"{what} {path} is too large to decode safely ({err}); shrink it") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot read {what} {path} as an image ({err})") from None


def check_seeds_and_labels(seeds: Sequence[int], labels: Sequence[int], *, some: bool = True) -> None:
    """`UserError` unless there is one label (a class id, -1 for none) per seed, and with `some` a
    seed at all (a job of none is a `--skip-existing` that found every image made)."""
    if some and len(seeds) == 0:
        raise UserError("no seeds given: a job makes one image per seed")
    if len(labels) != len(seeds):
        raise UserError(f"{len(labels)} labels for {len(seeds)} seeds: give one class id per seed (-1: no class)")


def check_start(seeds: Sequence[int], labels: Sequence[int], init: Any, mask: Any, strength: Any,
                channels: int) -> tuple[int, ...] | None:
    """The latent shape [C, h, w] of a job's start latents `init` (None without them), after a
    `UserError` for seeds, labels, init, mask and strength that do not fit together: a mask or a
    strength without init was dropped without a word, and a misshapen init failed in torch's expand."""
    check_seeds_and_labels(seeds, labels)
    if init is None:
        if mask is not None or real_number(strength, "strength") != 1.0:
            raise UserError(f"{'a mask' if mask is not None else 'strength'} needs start latents: pass init "
                            "(encode_image's latents) too")
        return None
    if not isinstance(init, torch.Tensor) or init.dim() != 4 or init.shape[0] not in (1, len(seeds)) \
            or init.shape[1] != channels:
        got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
        raise UserError(f"init must be latents [1 or {len(seeds)}, {channels}, h, w] (encode_image's), got {got}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1
                             or mask.shape[0] not in (1, len(seeds)) or mask.shape[-2:] != init.shape[-2:]):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise UserError(f"mask must be [1, 1, {init.shape[2]}, {init.shape[3]}] at init's size (prepare_mask's), "
                        f"got {got}")
    return tuple(init.shape[1:])


def filled(values: list[int], size: int) -> list[int]:
    """`values` extended to `size` entries by repeating its last one (a compiled job's short batch)."""
    return values + [values[-1]] * (size - len(values))


def check_parts(schedule: Any, prediction: Any, image_size: Any, vae: Any, sampler_defaults: Any) -> None:
    """`UserError` for what `LatentDiffusionPipeline(...)` is handed and would fail on only at the
    first generation (a schedule given by name, an unknown prediction, an image size the VAE
    cannot halve to its latents) or never (a sampler default no sampler takes, ignored)."""
    from ldmkit.diffusion import NoiseSchedule
    from ldmkit.diffusion.parameterization import check_prediction
    from ldmkit.diffusion.samplers import SAMPLERS, sampler_options

    if not isinstance(schedule, NoiseSchedule):
        raise UserError(f"schedule must be a NoiseSchedule (e.g. NoiseSchedule.create('scaled_linear', 1000)), "
                        f"got {type(schedule).__name__}")
    check_prediction(prediction)
    size, factor = whole_number(image_size, "image_size (square images: one number)"), vae.config.downsample_factor
    if size < factor or size % factor:
        raise UserError(f"image_size must be a positive multiple of the VAE's downsample factor {factor}, got {size}")
    known = sorted({name for sampler in SAMPLERS for name in sampler_options(sampler)})
    unknown = sorted(set(sampler_defaults or {}) - set(known))
    if unknown:
        raise UserError(f"sampler_defaults names {', '.join(unknown)}, which no sampler takes; they take "
                        f"{', '.join(known)}")
