"""Where a run may write: never into its own training data, nor over a model it cannot resume.

A run writes config.json, checkpoint.pt, the .safetensors files and samples/*.png into RUN.
With RUN equal to or inside the image folder those files become part of the data: the next
run over that folder trains on the sample grids, as a class "samples" (their folder).

A data folder inside RUN is refused too, although only RUN/samples itself would take our
files: a run folder is the run's own, something users delete or replace whole (`rm -r RUN`,
a fresh run over an old one), and a dataset kept inside one goes with it. No layout needs
the two nested, so any overlap is refused, whether or not RUN holds a run yet. The built-in
datasets ("emoji", "fashion-mnist[:DIR]") read only their own files and are never affected.

A run folder with a model file but no checkpoint.pt (deleted, or lost in a copy) is refused too:
a run there would start from scratch and replace the model at its first save, appending to the
old run's log, with no word about it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ldmkit.data.load import is_builtin_source
from ldmkit.errors import UserError
from ldmkit.run_files import CHECKPOINT_NAME, MODEL_FILE, MODEL_FILES


def _resolved(path: str | os.PathLike) -> Path:
    # resolve(): symlinks and ".." followed, so `--out data/../data` or a link to the data is caught
    return Path(path).expanduser().resolve()


def check_run_folder(data: str, out_dir: str | os.PathLike) -> None:
    """UserError when RUN and the image folder of `data` are the same or one holds the other."""
    if is_builtin_source(data):
        return
    folder, run = _resolved(data), _resolved(out_dir)
    if run == folder:
        raise UserError(f"--out {out_dir} is the --data folder: the run's files (checkpoint, samples/*.png) "
                        "would become training images; pick another output folder")
    if folder in run.parents:
        raise UserError(f"--out {out_dir} is inside the --data folder {data}: the run's samples/*.png would "
                        "become training images; put the run folder outside the data")
    if run in folder.parents:
        raise UserError(f"--data {data} is inside the --out folder {out_dir}: a run folder should hold only its "
                        "run (it is deleted or replaced whole); put the run folder outside the data")


def check_models_have_a_checkpoint(out_dir: Path, *, trains_vae: bool) -> None:
    """UserError when RUN holds model files and no checkpoint to resume: a run from scratch would
    replace them. Without `trains_vae` (`--stage diffusion` on RUN's own VAE, or --vae PATH) RUN's
    vae.safetensors is not written, and may stay."""
    if (out_dir / CHECKPOINT_NAME).is_file():
        return
    found = [name for name in MODEL_FILES if (out_dir / name).is_file()]
    if any(name == MODEL_FILE or trains_vae for name in found):
        raise UserError(f"{out_dir} holds a model ({', '.join(found)}) but no {CHECKPOINT_NAME} to resume from; "
                        f"choose a new --out, or remove the model files from {out_dir} to start over")
