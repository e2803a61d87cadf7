"""`convert(src, out, to=...)`: any supported model file or folder -> an ldmkit inference file
or a diffusers folder (the work behind `ldm convert`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ldmkit.errors import UserError
from ldmkit.interop.bundle import ModelBundle, load_bundle
from ldmkit.pretrained import resolve_model_source

TARGETS = ("ldmkit", "diffusers")


def convert(
    src: str | os.PathLike, out: str | os.PathLike, *, to: str = "ldmkit", dtype: str = "fp32",
    overwrite: bool = False, **options: Any
) -> ModelBundle:
    """Read `src` (see `load_bundle` for the sources and `options`) and write it to `out`:
    an ldmkit `.safetensors` inference file (`to="ldmkit"`: a new file, or with `overwrite` an
    earlier ldmkit model file) or a diffusers folder (`to="diffusers"`: a new or empty folder, or
    with `overwrite` an earlier export of this function, replaced whole). Returns the bundle written."""
    from ldmkit.interop.diffusers_export import check_destination, write_diffusers_folder
    from ldmkit.interop.ldmkit_file import write_ldmkit_file

    if to not in TARGETS:
        raise UserError(f"unknown conversion target {to!r}; choose one of {', '.join(TARGETS)}")
    out = Path(out)
    src = resolve_model_source(src)  # a bundled name: compare its file with `out` below
    if Path(src).resolve() == out.resolve():
        raise UserError(f"the output {out} is the source itself")
    if Path(src).resolve() in out.resolve().parents:  # a run folder's own model.safetensors, say
        raise UserError(f"the output {out} is inside the source folder {src}: choose another output")
    # The destination is checked before the source is read: a large one takes a while.
    if to == "diffusers":
        check_destination(out, overwrite)
        if out.resolve() in Path(src).resolve().parents:
            raise UserError(f"the source {src} is inside the output folder {out}: choose another output")
    else:
        check_file_destination(out, overwrite)
    if to == "diffusers" and dtype != "fp32":  # before the source is read, as the destination
        raise UserError("--dtype applies to ldmkit files; a diffusers folder is written in fp32")
    bundle = load_bundle(src, **options)
    if to == "ldmkit":
        write_ldmkit_file(out, bundle, dtype=dtype)
    else:
        write_diffusers_folder(out, bundle, overwrite=overwrite)
    return bundle


def check_file_destination(out: Path, overwrite: bool = False) -> None:
    """`UserError` unless `out` may receive an ldmkit model file: a new .safetensors path, or (with
    `overwrite`) an ldmkit model file that no run folder owns. Any other file there is someone's
    weights (a diffusers download, a checkpoint), and a run's model belongs with its checkpoint."""
    from ldmkit.interop.bundle import is_ldmkit_file
    from ldmkit.run_files import run_owned_file

    if out.suffix != ".safetensors":
        raise UserError(f"an ldmkit model file ends in .safetensors, got {out}")
    out = Path(os.path.realpath(out))  # what "missing/../model.safetensors" will be, once "missing" is made
    if out.is_dir():
        raise UserError(f"{out} is a folder; give the path of the .safetensors file to write")
    if not out.exists():
        return
    if run_owned_file(out):
        raise UserError(f"{out} is a file ldm train writes in the run {out.parent}: choose another output")
    if not is_ldmkit_file(out):
        raise UserError(f"{out} exists and is not an ldmkit model file: choose another output")
    if not overwrite:
        raise UserError(f"{out} already holds an ldmkit model file: pass --overwrite to replace it, "
                        "or choose another output")
