"""The slim inference file: one safetensors file that rebuilds the UNet and the VAE alone.

Keys are prefixed `unet.` (the EMA weights) and `vae.` (including the measured latent shift
and scale buffers). The safetensors metadata (a str -> str map) holds JSON: the model
configs, the noise schedule, the prediction type, class names, image size, channels, step,
the ldmkit version and the resolved run config, so loading needs no other file and never
unpickles code (k-diffusion's `convert_for_inference.py` does the same split). A VAE-only
file (after `--stage vae`) has no `unet.` keys.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from ldmkit.atomic import atomic_write
from ldmkit.errors import UserError
from ldmkit.json_text import loads
from ldmkit.models.fitted import build_fitted
from ldmkit.pretrained import resolve_model_source
from ldmkit.run_files import MODEL_FILE, VAE_FILE, run_file_message

FORMAT = "ldmkit-inference"
FORMAT_VERSION = 1
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage, and the file must not alias
    # live training weights.
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_inference_file(
    path: str | os.PathLike,
    *,
    unet: nn.Module | None,
    vae: nn.Module,
    run_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `unet` (pass the EMA copy; None for a VAE-only file) and `vae` to `path` atomically.

    The standard metadata (model configs, prediction, image size, channels) is taken from
    the modules and `run_config`; `extra` adds or overrides entries (the trainer passes
    `schedule`, `class_names` and `step`). Every value is stored as JSON.
    """
    from ldmkit import __version__

    diffusion = run_config.get("diffusion", {})
    vae_config = vae.config.to_dict()  # type: ignore[union-attr]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ldmkit_version": __version__,
        "vae_config": vae_config,
        "unet_config": unet.config.to_dict() if unet is not None else None,  # type: ignore[union-attr]
        "prediction": diffusion.get("prediction", "eps"),
        "image_size": run_config.get("image_size"),
        "channels": vae_config.get("in_channels"),
        "class_names": [],
        "schedule": None,
        "step": None,
        "run_config": run_config,
    }
    meta.update(extra or {})
    tensors = _tensors("vae.", vae)
    if unet is not None:
        tensors.update(_tensors("unet.", unet))
    blob = save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()})
    atomic_write(path, lambda f: f.write(blob))


def resolve_inference_path(path: str | os.PathLike, *, require_unet: bool = True) -> Path:
    """A file as given, or the model file inside a RUN folder (the VAE file if allowed), or the
    file of a bundled model's name (`--vae emoji`: its VAE)."""
    path = Path(resolve_model_source(path))
    if path.is_dir():
        candidates = [path / MODEL_FILE] + ([] if require_unet else [path / VAE_FILE])
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        names = " or ".join(c.name for c in candidates)
        raise UserError(f"{path} holds no {names}: is it a finished ldmkit run folder?")
    if not path.is_file():
        raise UserError(f"no such model file or run folder: {path}")
    return path


def read_inference_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of an inference file (or RUN folder), without loading weights."""
    path = resolve_inference_path(path, require_unet=False)
    not_a_model = run_file_message(path)  # a run's checkpoint or latent cache, passed for its model
    if not_a_model:
        raise UserError(not_a_model)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    if raw.get("format") != json.dumps(FORMAT):  # other safetensors files' metadata need not be JSON
        raise UserError(f"{path} is a safetensors file but not an ldmkit model file (no ldmkit metadata); "
                        "`ldm convert` makes one from diffusers or Stable Diffusion weights")
    try:
        meta = {k: loads(v) for k, v in raw.items()}
    except ValueError as e:
        raise UserError(f"{path}: its ldmkit metadata is damaged ({e})") from None
    problem = _metadata_problem(meta)
    if problem:
        raise UserError(f"{path}: its ldmkit metadata is damaged ({problem})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer ldmkit; upgrade to load it")
    return meta


# The kind of each entry a reader uses (None is allowed for all): the file is JSON anyone can write.
_METADATA_KINDS: dict[str, type] = {
    "format_version": int, "image_size": int, "channels": int, "step": int, "prediction": str, "source": str,
    "class_names": list, "unet_config": dict, "vae_config": dict, "schedule": dict, "sampler_defaults": dict,
    "run_config": dict, "text_encoder_config": dict, "tokenizer_files": dict,
}
# interop/diffusers_scheduler.py; spacing is one of diffusion.timesteps.SPACINGS, steps_offset >= 0
SAMPLER_DEFAULTS = {"spacing": str, "steps_offset": int, "set_alpha_to_one": bool, "karras_sigmas": bool}


def _metadata_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the decoded metadata's entries, or None."""
    for key, kind in _METADATA_KINDS.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            return f"{key} is {value!r:.60}, not a JSON {kind.__name__}"
    if not all(isinstance(name, str) for name in meta.get("class_names") or []):
        return "class_names holds something other than names"
    wrong = sampler_defaults_problem(meta.get("sampler_defaults") or {})
    return None if wrong is None else f"sampler_defaults has {wrong}"


def sampler_defaults_problem(defaults: dict[str, Any]) -> str | None:
    """The first entry of `defaults` that SAMPLER_DEFAULTS does not allow ("key=value"), or None."""
    from ldmkit.diffusion.timesteps import SPACINGS

    for key, value in defaults.items():
        kind = SAMPLER_DEFAULTS.get(key)
        if kind is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key}={value!r:.60}"
        if (key == "spacing" and value not in SPACINGS) or (key == "steps_offset" and value < 0):
            return f"{key}={value!r:.60}"  # the samplers would refuse it only at the first generation
    return None


def _built(make: Callable[[], ModuleT], weights: dict[str, torch.Tensor], prefix: str, path: Path) -> ModuleT:
    """`make()` holding the `prefix` weights, checked against them before it is built (models/fitted.py)."""
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return build_fitted(make, state, source=f"{path}: the {prefix}* weights")


def load_inference_file(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, require_unet: bool = True
) -> tuple[nn.Module | None, nn.Module, dict[str, Any]]:
    """Rebuild `(unet, vae, meta)` from an inference file or a RUN folder, in eval mode.

    `unet` is None for a VAE-only file, which is accepted only with `require_unet=False`.
    """
    from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig

    path = resolve_inference_path(path, require_unet=require_unet)
    meta = read_inference_metadata(path)
    if meta.get("unet_config") is None and require_unet:
        raise UserError(f"{path} holds only a VAE (from a --stage vae run); a UNet is needed here")
    weights = load_file(str(path), device="cpu")
    vae_config = AutoencoderKLConfig.from_dict(meta["vae_config"])
    vae = _built(lambda: AutoencoderKL(vae_config), weights, "vae.", path)
    unet = None
    if meta.get("unet_config") is not None:
        unet_config = UNetConfig.from_dict(meta["unet_config"])
        unet = _built(lambda: UNet(unet_config), weights, "unet.", path)
        unet = unet.to(device).eval()
    return unet, vae.to(device).eval(), meta
