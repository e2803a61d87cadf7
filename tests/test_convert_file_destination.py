"""`ldm convert` to an ldmkit file that exists: only an earlier ldmkit model file is replaced, and
only with --overwrite; a run folder's own files and other weights are never written over.

The user-testing report: `ldm convert RUN RUN/model.safetensors --dtype fp16` replaced the run's
fp32 model with an fp16 copy of itself, and `ldm convert emoji DL/unet/diffusion_pytorch_model.safetensors`
replaced a diffusers download's UNet weights, both with exit status 0."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import save_tiny_class_model

from ldmkit.cli import main


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_class_model(tmp_path_factory.mktemp("m") / "model.safetensors", ["red", "green"])


@pytest.fixture
def run(model, tmp_path) -> Path:
    """A run folder as `ldm train` leaves it (its log marks it a run)."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(model, folder / "model.safetensors")
    shutil.copy(model, folder / "vae.safetensors")
    (folder / "log.jsonl").write_text("{}\n")
    return folder


def refused(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["convert", *argv]) == 2
    return capsys.readouterr().err


def test_a_run_folder_into_its_own_model_file_is_refused(run, capsys):
    before = digest(run / "model.safetensors")
    err = refused(capsys, str(run), str(run / "model.safetensors"), "--dtype", "fp16")
    assert f"the output {run / 'model.safetensors'} is inside the source folder {run}" in err
    assert digest(run / "model.safetensors") == before


def test_another_runs_files_are_never_replaced(model, run, capsys):
    for name in ("vae.safetensors", "model.safetensors"):
        before = digest(run / name)
        err = refused(capsys, str(model), str(run / name), "--overwrite")
        assert f"{run / name} is a file ldm train writes in the run {run}: choose another output" in err
        assert digest(run / name) == before


def test_weights_that_are_not_an_ldmkit_file_are_never_replaced(model, tmp_path, capsys):
    download = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(download))
    before = digest(download)
    for extra in ([], ["--overwrite"]):
        err = refused(capsys, str(model), str(download), *extra)
        assert f"{download} exists and is not an ldmkit model file: choose another output" in err
    assert digest(download) == before


def test_an_earlier_ldmkit_file_is_replaced_only_with_overwrite(model, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(model), str(out)]) == 0
    first = digest(out)
    err = refused(capsys, str(model), str(out), "--dtype", "fp16")
    assert f"{out} already holds an ldmkit model file: pass --overwrite to replace it" in err
    assert digest(out) == first
    assert main(["convert", str(model), str(out), "--dtype", "fp16", "--overwrite"]) == 0
    assert digest(out) != first


def test_a_folder_named_like_a_file_is_refused(model, tmp_path, capsys):
    (tmp_path / "x.safetensors").mkdir()
    err = refused(capsys, str(model), str(tmp_path / "x.safetensors"))
    assert "is a folder; give the path of the .safetensors file to write" in err


def test_a_path_through_a_missing_folder_is_checked_where_it_lands(model, run, tmp_path, capsys):
    """"run/nosuch/../model.safetensors" and "nosuch/../precious" passed every check (nothing
    there yet), then landed on the run's model and on a folder of the user's files."""
    before = digest(run / "model.safetensors")
    err = refused(capsys, str(model), str(run / "nosuch" / ".." / "model.safetensors"), "--overwrite")
    assert "is a file ldm train writes in the run" in err
    assert digest(run / "model.safetensors") == before
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work\n")
    for extra in ([], ["--overwrite"]):
        err = refused(capsys, str(model), str(tmp_path / "nosuch" / ".." / "precious"), "--to", "diffusers", *extra)
        assert "is not empty and is not a diffusers folder" in err
    assert (precious / "thesis.txt").read_text() == "years of work\n"


def test_a_file_no_model_can_generate_with_is_described_and_named(tmp_path, capsys):
    """An image size the VAE's factor does not divide (written by an older ldmkit): `ldm info`
    shows the file and says why it cannot generate; `ldm generate` names the file, not the path
    stored in it as its source."""
    from tiny_models import tiny_class_models

    from ldmkit.interop.bundle import ModelBundle
    from ldmkit.interop.ldmkit_file import write_ldmkit_file

    vae, unet = tiny_class_models(2)
    bad = write_ldmkit_file(tmp_path / "old.safetensors", ModelBundle(
        unet=unet, vae=vae, image_size=15, class_names=["a", "b"], source="/elsewhere/model.safetensors"))
    capsys.readouterr()
    assert main(["info", str(bad)]) == 0
    captured = capsys.readouterr()
    assert "holds:" in captured.out
    assert f"warning: this model cannot generate: {bad}: the image size 15 is not a multiple" in captured.err
    assert main(["generate", "--model", str(bad), "--n", "1", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: the image size 15" in err and "/elsewhere" not in err
