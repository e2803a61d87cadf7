"""Writing a `ModelBundle` as a diffusers folder that `from_pretrained` loads.

    UNet + VAE (+ CLIP)   a pipeline folder: unet/, vae/, scheduler/ (a DDIMScheduler config),
                          and with a text encoder text_encoder/, tokenizer/ and a
                          StableDiffusionPipeline model_index.json
    one model             a model folder: config.json + diffusion_pytorch_model.safetensors

`ldmkit.json` keeps what diffusers' configs cannot (class names, the image size), so
ldmkit -> diffusers -> ldmkit gives back the same bundle. Weights are renamed, never recomputed.

The folder is written whole, never into an earlier one: a reader picks the layout from what it
finds (model_index.json, ldmkit.json, a top-level config.json), so a VAE written over a pipeline
export left a folder still read as the old pipeline. The export goes to a hidden folder beside
the destination and is renamed into place once complete; a destination that is not empty is
refused unless `overwrite`, and even then only a diffusers folder is replaced (never a run folder,
or a folder of other files, which `ldm convert --overwrite` would otherwise wipe).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from ldmkit.atomic import atomic_write_text, fsync_directory
from ldmkit.errors import UserError
from ldmkit.interop.bundle import ModelBundle
from ldmkit.interop.diffusers_config import autoencoder_config_to_diffusers, unet_config_to_diffusers
from ldmkit.interop.diffusers_folder import EXPORT_INFO, WEIGHTS
from ldmkit.interop.diffusers_keys import autoencoder_state_dict_to_diffusers, unet_state_dict_to_diffusers
from ldmkit.interop.diffusers_scheduler import schedule_to_diffusers
from ldmkit.interop.weights_io import write_safetensors
from ldmkit.json_text import read_json_file
from ldmkit.run_files import MODEL_FILES


def _diffusers_version() -> str:
    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return "0.30.0"  # any version that reads these configs; diffusers only warns on a mismatch


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_unet(folder: Path, bundle: ModelBundle, mark: bool = False) -> None:
    unet = bundle.unet
    name, config = unet_config_to_diffusers(unet.config)
    image_size = bundle.resolved_image_size()
    if image_size is not None and bundle.vae is not None:
        config["sample_size"] = image_size // bundle.vae.config.downsample_factor
    header = {"_class_name": name, "_diffusers_version": _diffusers_version(), **({EXPORT_MARK: True} if mark else {})}
    _write_json(folder / "config.json", {**header, **config})
    weights = unet_state_dict_to_diffusers(unet.state_dict(), cross_attention=unet.config.context_dim is not None)
    write_safetensors(folder / f"{WEIGHTS}.safetensors", weights, {"format": "pt"})


def _write_vae(folder: Path, bundle: ModelBundle, mark: bool = False) -> None:
    vae = bundle.vae
    config = autoencoder_config_to_diffusers(vae.config, vae.latent_shift, vae.latent_scale)
    image_size = bundle.resolved_image_size()  # as the UNet's: without it diffusers takes 32 (its tile size)
    if image_size is not None:
        config["sample_size"] = image_size
    header = {"_class_name": "AutoencoderKL", "_diffusers_version": _diffusers_version(),
              **({EXPORT_MARK: True} if mark else {})}
    _write_json(folder / "config.json", {**header, **config})
    weights = autoencoder_state_dict_to_diffusers(vae.state_dict())
    write_safetensors(folder / f"{WEIGHTS}.safetensors", weights, {"format": "pt"})


def _write_text_encoder(folder: Path, bundle: ModelBundle) -> None:
    config, weights, tokenizer_files = bundle.text_encoder.parts()
    _write_json(folder / "text_encoder" / "config.json", {**config, "architectures": ["CLIPTextModel"]})
    write_safetensors(folder / "text_encoder" / "model.safetensors", weights, {"format": "pt"})
    for name, text in tokenizer_files.items():
        atomic_write_text(folder / "tokenizer" / name, text)


def _text_model_index() -> dict[str, Any]:
    """model_index.json of a text-to-image export: what StableDiffusionPipeline.from_pretrained reads."""
    none = [None, None]
    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": none, "feature_extractor": none,
        "image_encoder": none, "requires_safety_checker": False,
    }


EXPORT_MARK = "_ldmkit_export"  # in a lone model's config.json (diffusers drops "_" keys when it loads)


def _config(folder: Path) -> dict[str, Any]:
    try:
        config = read_json_file(folder / "config.json")
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def is_diffusers_folder(folder: Path) -> bool:
    """Whether `folder` holds a diffusers pipeline or model folder (an export or a download)."""
    if any((folder / name).exists() for name in MODEL_FILES):  # an ldmkit run: checkpoints, logs
        return False
    return ((folder / "model_index.json").is_file() or (folder / EXPORT_INFO).is_file()
            or "_diffusers_version" in _config(folder))


def is_ldmkit_export(folder: Path) -> bool:
    """Whether `folder` is an earlier `ldm convert --to diffusers` export: the only kind of folder
    `overwrite` may replace (a download holds what the user put beside it, and no second copy)."""
    return is_diffusers_folder(folder) and ((folder / EXPORT_INFO).is_file() or bool(_config(folder).get(EXPORT_MARK)))


def check_destination(folder: Path, overwrite: bool = False) -> None:
    """`UserError` unless `folder` may receive an export: absent, an empty folder, or (with
    `overwrite`) a diffusers folder to replace whole."""
    folder = Path(os.path.realpath(folder))  # "missing/../precious" is precious/ once "missing" is made
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    if not any(folder.iterdir()):
        return
    if not is_diffusers_folder(folder):
        raise UserError(f"{folder} is not empty and is not a diffusers folder: choose a new or empty folder "
                        "(--overwrite replaces only an earlier diffusers export)")
    if not is_ldmkit_export(folder):
        raise UserError(f"{folder} holds a diffusers folder ldmkit did not write (a download?): --overwrite replaces "
                        "only an earlier `ldm convert --to diffusers` export; choose a new or empty folder")
    if not overwrite:
        raise UserError(f"{folder} already holds a diffusers folder: pass --overwrite to replace it, "
                        "or choose a new folder")


def _beside(folder: Path, what: str) -> Path:
    """A hidden name in `folder`'s parent (a rename within one file system is atomic)."""
    return folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{what}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True


def recover_leftovers(folder: Path) -> None:
    """Tidy what a killed export (SIGKILL, power loss: `finally` never ran) left beside `folder`:
    its unfinished .tmp folder is removed, and an earlier export it had moved aside (.old) is put
    back where `folder` was, or removed when `folder` holds the finished new one. Only the names of
    processes no longer running are touched; each change is a warning."""
    if not folder.parent.is_dir():
        return
    prefix = f".{folder.name}."
    for path in sorted(folder.parent.glob(glob.escape(prefix) + "*")):
        parts = path.name[len(prefix) :].split(".")  # pid, random hex, tmp | old (_beside's names)
        if len(parts) != 3 or not parts[0].isdigit() or parts[2] not in ("tmp", "old") or not path.is_dir():
            continue
        if _pid_alive(int(parts[0])):
            continue
        if parts[2] == "old" and not folder.exists():
            os.replace(path, folder)
            warnings.warn(f"put back {folder}, which an interrupted export had moved to {path.name}", stacklevel=2)
        else:
            shutil.rmtree(path, ignore_errors=True)
            warnings.warn(f"removed {path.parent / path.name}, left by an interrupted export", stacklevel=2)


def _swap_in(new: Path, folder: Path) -> None:
    """Rename the finished export `new` to `folder`, replacing an empty or earlier one. Two
    renames, not one: should the process die between them, the old export is kept under the
    hidden .old name beside `folder`, and the next export to `folder` puts it back
    (`recover_leftovers`)."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # os.replace onto an empty folder works on POSIX, not on Windows
    if not folder.exists():
        os.replace(new, folder)
    else:
        old = _beside(folder, "old")
        os.replace(folder, old)
        try:
            os.replace(new, folder)
        except BaseException:  # put the earlier export back where it was
            os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_directory(folder.parent)


def write_diffusers_folder(folder: str | os.PathLike, bundle: ModelBundle, *, overwrite: bool = False) -> Path:
    """Write `bundle` as the diffusers folder `folder`: a new or empty folder, or (`overwrite`)
    one that holds a diffusers folder, replaced whole (`check_destination`). Nothing changes at
    `folder` until the export is complete."""
    folder = Path(os.path.realpath(folder))  # a link's target is replaced, not the link
    recover_leftovers(folder)
    check_destination(folder, overwrite)
    if bundle.components not in (["unet"], ["vae"]) and (bundle.unet is None or bundle.vae is None):
        raise UserError(
            f"{bundle.source}: a diffusers pipeline folder needs a UNet and a VAE (have {', '.join(bundle.components)})"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    new = _beside(folder, "tmp")
    try:
        _write_bundle(new, bundle)
        _swap_in(new, folder)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # gone already unless something failed
    return folder


def _write_bundle(folder: Path, bundle: ModelBundle) -> None:
    """A model folder for a lone UNet or VAE, else a pipeline folder."""
    folder.mkdir()
    present = bundle.components
    if present in (["unet"], ["vae"]):
        (_write_unet if present == ["unet"] else _write_vae)(folder, bundle, mark=True)
        return
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
        _write_json(folder / "model_index.json", _text_model_index())
    _write_json(folder / EXPORT_INFO, {"format": "ldmkit-diffusers-export", "class_names": list(bundle.class_names),
                                       "image_size": bundle.resolved_image_size()})
