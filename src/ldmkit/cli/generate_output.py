"""`ldm generate`'s output folder: checked before the model loads and made after it (a model that
fails to load leaves no empty folder behind), and the files `--skip-existing` may keep: readable
PNGs of the same job (a different model, step count or guidance would mix two jobs' images)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image

from ldmkit.errors import UserError
from ldmkit.eval.samples_io import GRID_FILE, GRID_TAG, SAMPLES_FILE, is_generate_grid, read_samples_info, sample_paths


def real(path: Path) -> Path:
    """The path the kernel will write to, a folder not yet made included: links followed, and
    "missing/.." taken as the folder it is once "missing" exists (`Path.exists()` says False for it
    now, which let checks pass and the write land on an existing file)."""
    return Path(os.path.realpath(path))


def check_folder(path: str | Path, flag: str) -> Path:
    """`UserError` now if `path` cannot become a folder (a file, under a file, not writable);
    the folder itself is made by `make_folder` once the work is sure to start."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot make the {flag} folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot make the {flag} folder {folder}: {existing} is not writable")
    return folder


def make_folder(folder: Path, flag: str) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {folder} is a file, not a folder") from None
    except OSError as err:
        raise UserError(f"cannot make the {flag} folder {folder}: {err.strerror or err}") from None
    return folder


def job_settings(args: argparse.Namespace, image_size: int | None, cfg: float | None, strength: float | None) -> dict:
    """What decides image k besides its seed and class: equal settings, equal images. `cfg` and
    `strength` as sampling resolves them (a default and the same value given are one job)."""
    def path_of(value: str | None) -> str | None:
        return None if value is None else str(Path(value).resolve())

    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model.lower()
    return {"model": model, "image_size": image_size, "sampler": args.sampler, "steps": args.steps, "cfg": cfg,
            "cfg_rescale": args.cfg_rescale, "prompt": args.prompt, "negative_prompt": args.negative_prompt,
            "init_image": path_of(args.init_image), "mask": path_of(args.mask), "strength": strength,
            "fit": bool(args.fit), "tokenizer": path_of(args.tokenizer)}  # a prompt's tokens


def readable_png(path: Path) -> bool:
    """Whether `path` is a whole PNG (an empty or cut file is made again, not kept)."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, SyntaxError, ValueError):  # PIL's verify raises SyntaxError for a damaged PNG
        return False


def _job_differences(info: dict, class_names: list[str], settings: dict) -> list[str]:
    """How the job `samples.json` recorded differs from this one ([] for the same job)."""
    if info["class_names"] != class_names:
        return [f"a model with other classes ({', '.join(info['class_names'][:5]) or 'none'})"]
    kept = info.get("settings") or {}
    return [f"{key} {kept.get(key)!r}, now {value!r}" for key, value in settings.items() if kept.get(key) != value]


def check_same_job(out: Path, class_names: list[str], settings: dict) -> None:
    """`UserError` unless the images kept in `out` were made by this job (as `samples.json` says;
    a folder without one, from before ldmkit wrote it, is taken as it is)."""
    out = real(out)
    info = read_samples_info(out)
    if info is None:
        return
    if info["class_names"] != class_names:
        raise UserError(f"--skip-existing: the images in {out}/ are of a model with other classes ({SAMPLES_FILE}); "
                        "give another --out")
    changed = _job_differences(info, class_names, settings)
    if changed:
        raise UserError(f"--skip-existing: the images in {out}/ were made with other settings ({'; '.join(changed)}); "
                        "give another --out, or remove them first")


def check_no_other_job(out: Path, names: list[str], class_names: list[str], settings: dict) -> None:
    """`UserError` if `out` holds sample PNGs of another job (as `samples.json` records it): those
    this job would not overwrite would stay beside its own, and those it would overwrite are mixed
    with its own until it ends (an interrupt, then `--skip-existing`, kept them as this job's), in
    the grid and in what `ldm eval --samples` reads. Images of this same job beyond its count (an
    earlier, larger --n) are its own and may stay; PNGs with no `samples.json` (made by an older
    ldmkit) only where this job replaces them all."""
    out = real(out)  # "nosuch/../photos" is photos/ once nosuch is made
    if (out / SAMPLES_FILE).is_file():  # the job writes its own there: a user's file of that name is not replaced
        try:
            read_samples_info(out)
        except UserError:
            raise UserError(f"{out / SAMPLES_FILE} is not a file ldm generate wrote, and a job writes its own there: "
                            "give another --out, or move that file") from None
    existing = [path.name for path in sample_paths(out)] if out.is_dir() else []
    if not existing:
        return
    info = read_samples_info(out)
    if info is None:
        ours = set(names)
        others, why = [name for name in existing if name not in ours], f"no {SAMPLES_FILE} says which job made them"
    else:
        others, why = existing, "; ".join(_job_differences(info, class_names, settings))
    if not others or not why:
        return
    example = others[0] + (", ..." if len(others) > 1 else "")
    raise UserError(f"{out}/ holds {len(others)} images of another job ({example}; {why}), so the folder would mix "
                    "two jobs: give another --out, or remove them first")


def grid_pnginfo():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(*GRID_TAG)
    return info


def check_grid_destination(grid: Path, out: Path) -> None:
    """`UserError` unless `grid` is new, or a grid ldm generate wrote (tagged, or OUT/grid.png beside
    a `samples.json`): `--grid` once wrote over any file, the model being used included."""
    grid, out = real(grid), real(out)  # "nosuch/../model.safetensors" names the model once nosuch is made
    if not grid.exists():
        return
    ours = grid == out / GRID_FILE and (out / SAMPLES_FILE).is_file() or is_generate_grid(grid)
    if not ours:
        raise UserError(f"--grid {grid} exists and is not a grid ldm generate wrote: give another --grid")


def check_inputs_not_written(written: list[Path], inputs: dict[str, str | None]) -> None:
    """`UserError` if an input file (`--init-image`, `--mask`, `--model`) is one this job writes:
    it would be replaced by an output (an init image in --out named like a sample was)."""
    targets = {real(path) for path in written}
    for flag, value in inputs.items():
        if value is not None and Path(value).is_file() and real(Path(value)) in targets:
            raise UserError(f"{flag} {value} is a file this job writes its output to: give another --out or --grid")
