"""`ldm generate` never writes over a file it did not make (a user-testing report): `--grid` replaced
any file, the model being used included, and an `--init-image` inside `--out` named like a
sample was replaced by the output made from it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_generate_cli import CLASSES, generate, model_file  # noqa: F401 (fixture)
from tiny_models import save_tiny_class_model

from ldmkit.cli import main


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_grid_over_the_model_or_a_photo_is_refused(model_file, tmp_path, capsys):  # noqa: F811
    model = Path(shutil.copy(model_file, tmp_path / "model.safetensors"))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(photo)
    for victim in (model, photo):
        before = digest(victim)
        assert generate(model, tmp_path / "out", "--grid", str(victim)) == 2
        assert f"--grid {victim} exists and is not a grid ldm generate wrote: give another --grid" in \
            capsys.readouterr().err
        assert digest(victim) == before
    assert not (tmp_path / "out").exists()  # refused before the folder was made


def test_a_grid_ldm_generate_wrote_is_written_again(model_file, tmp_path):  # noqa: F811
    grid = tmp_path / "grids" / "g.png"
    assert generate(model_file, tmp_path / "out", "--grid", str(grid)) == 0
    assert generate(model_file, tmp_path / "other", "--grid", str(grid)) == 0  # its own grid: replaced
    assert generate(model_file, tmp_path / "out") == 0  # OUT/grid.png of the folder's own job


def test_an_init_image_the_job_would_write_over_is_refused(tmp_path, capsys):
    model = save_tiny_class_model(tmp_path / "m.safetensors", CLASSES)  # 16 px images
    out = tmp_path / "loop"
    out.mkdir()
    start = out / "00000_seed0_class0.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(start)
    before = digest(start)
    assert main(["generate", "--model", str(model), "--class", "red", "--n", "1", "--steps", "2", "--device", "cpu",
                 "--quiet", "--init-image", str(start), "--strength", "0.5", "--out", str(out)]) == 2
    assert f"--init-image {start} is a file this job writes its output to" in capsys.readouterr().err
    assert digest(start) == before


def test_skip_existing_keeps_no_images_of_another_tokenizer(tmp_path):
    """Seed 0 under two tokenizers differed by up to 32 levels, and --skip-existing kept it."""
    import argparse

    from ldmkit.cli.generate_output import check_same_job, job_settings
    from ldmkit.errors import UserError
    from ldmkit.eval.samples_io import write_samples_info

    def settings(tokenizer):
        args = argparse.Namespace(model="m.safetensors", sampler="ddim", steps=2, cfg_rescale=0.0, prompt="a cat",
                                  negative_prompt="", init_image=None, mask=None, fit=False, tokenizer=tokenizer)
        return job_settings(args, 16, 7.5, None)

    write_samples_info(tmp_path, [], settings(str(tmp_path / "tok_a")))
    check_same_job(tmp_path, [], settings(str(tmp_path / "tok_a")))  # the same job: kept
    with pytest.raises(UserError, match=r"made with other settings \(tokenizer '.*tok_a', now '.*tok_b'\)"):
        check_same_job(tmp_path, [], settings(str(tmp_path / "tok_b")))


def test_a_grid_path_through_a_missing_folder_is_checked_where_it_lands(model_file, tmp_path, capsys):  # noqa: F811
    """"nosuch/../model.safetensors" did not exist for the check and was the model once nosuch was made."""
    model = Path(shutil.copy(model_file, tmp_path / "model.safetensors"))
    before = digest(model)
    assert generate(model, tmp_path / "out", "--grid", str(tmp_path / "nosuch" / ".." / "model.safetensors")) == 2
    assert "exists and is not a grid ldm generate wrote" in capsys.readouterr().err
    assert digest(model) == before


def test_an_older_untagged_grid_of_the_folders_own_job_is_written_again(model_file, tmp_path):  # noqa: F811
    """OUT/grid.png from before grids were tagged, beside the folder's samples.json, is the job's own."""
    out = tmp_path / "out"
    assert generate(model_file, out) == 0
    Image.open(out / "grid.png").convert("RGB").save(out / "grid.png")  # the same grid, without the tag
    assert Image.open(out / "grid.png").info.get("Software") is None
    assert generate(model_file, out) == 0
    assert Image.open(out / "grid.png").info.get("Software") == "ldmkit generate grid"


def test_a_users_samples_json_is_not_replaced_and_dead_writers_files_are_removed(model_file, tmp_path, capsys):  # noqa: F811
    """A folder with a user's samples.json and no PNGs had it replaced by the job's description; a
    job killed mid-write left a hidden partial PNG that no later job removed."""
    import subprocess
    import sys

    project = tmp_path / "project"
    project.mkdir()
    (project / "samples.json").write_text('{"my": "notes"}')
    assert generate(model_file, project) == 2
    assert "samples.json is not a file ldm generate wrote" in capsys.readouterr().err
    assert (project / "samples.json").read_text() == '{"my": "notes"}'

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    out.mkdir()
    from ldmkit.atomic import _HOST

    partial = out / f".00000_seed0_class0.png.{_HOST}.{ended.stdout.strip()}.0123abcd.tmp"
    partial.write_bytes(b"\x89PNG half")
    alive = out / f".00001_seed1_class1.png.{_HOST}.1.89abcdef.tmp"  # pid 1 lives: a writer still at work
    alive.write_bytes(b"")
    assert generate(model_file, out) == 0
    assert not partial.exists() and alive.exists()
