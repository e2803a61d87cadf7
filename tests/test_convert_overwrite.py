"""`ldm convert --to diffusers` into a folder that exists: an earlier export is replaced whole
(with --overwrite) or refused, never mixed with the new one; other folders are never written into.

The user-testing report: a VAE-only run converted over a pipeline export said "wrote vae", but the
folder still read as the old pipeline (its config.json and weights landed beside unet/ and vae/)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tiny_models import save_tiny_class_model, tiny_class_models

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.interop import convert, diffusers_export, load_bundle
from ldmkit.interop.bundle import ModelBundle
from ldmkit.interop.ldmkit_file import write_ldmkit_file


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    """(a UNet + VAE model file, a VAE-only model file)."""
    folder = tmp_path_factory.mktemp("sources")
    pipeline = save_tiny_class_model(folder / "pipeline.safetensors", ["red", "green"])
    vae_only = write_ldmkit_file(folder / "vae.safetensors", ModelBundle(vae=tiny_class_models(2)[0], source="vae"))
    return pipeline, vae_only


def info(folder: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_new_export_over_an_old_one_is_refused_or_replaces_it_whole(sources, tmp_path, capsys):
    pipeline, vae_only = sources
    out = tmp_path / "X"
    assert main(["convert", str(pipeline), str(out), "--to", "diffusers"]) == 0
    assert info(out, capsys)["components"] == ["unet", "vae"]
    assert main(["convert", str(vae_only), str(out), "--to", "diffusers"]) == 2
    assert "already holds a diffusers folder: pass --overwrite" in capsys.readouterr().err
    assert info(out, capsys)["components"] == ["unet", "vae"]  # untouched
    assert main(["convert", str(vae_only), str(out), "--to", "diffusers", "--overwrite"]) == 0
    assert info(out, capsys)["components"] == ["vae"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert main(["convert", str(pipeline), str(out), "--to", "diffusers", "--overwrite"]) == 0  # and back
    assert info(out, capsys)["class_names"] == ["red", "green"]
    assert not (out / "config.json").exists() and leftovers(tmp_path) == []


def test_an_empty_folder_is_written_into(sources, tmp_path):
    (tmp_path / "empty").mkdir()
    convert(sources[1], tmp_path / "empty", to="diffusers")
    assert load_bundle(tmp_path / "empty").components == ["vae"] and leftovers(tmp_path) == []


@pytest.mark.parametrize("contents", [{"notes.txt": "mine"}, {"model.safetensors": "a run", "config.json": "{}"},
                                      {"config.json": '{"_class_name": "Other"}'}])
def test_other_folders_are_refused_even_with_overwrite(sources, tmp_path, contents):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in contents.items():
        (out / name).write_text(text)
    for overwrite in (False, True):
        with pytest.raises(UserError, match="is not empty and is not a diffusers folder"):
            convert(sources[1], out, to="diffusers", overwrite=overwrite)
    assert {p.name: p.read_text() for p in out.iterdir()} == contents


def test_a_failed_export_leaves_the_old_one_as_it_was(sources, tmp_path, monkeypatch):
    out = tmp_path / "X"
    convert(sources[0], out, to="diffusers")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(folder, bundle, **options):
        raise OSError(28, "No space left on device", str(folder))

    monkeypatch.setattr(diffusers_export, "_write_vae", full_disk)
    with pytest.raises(OSError, match="No space"):
        convert(sources[1], out, to="diffusers", overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def test_the_source_inside_the_output_is_not_deleted(sources, tmp_path):
    out = tmp_path / "X"
    convert(sources[0], out, to="diffusers")
    with pytest.raises(UserError, match="is inside the output folder"):
        convert(out / "vae", out, to="diffusers", overwrite=True)
    assert (out / "vae" / "config.json").is_file()


def test_the_help_says_what_happens_to_an_existing_folder(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "replaced whole" in text and "never written into" in text


def _dead_pid() -> int:
    """A process id no process has (the child's, once it has exited and been waited for)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_what_a_killed_export_left_beside_the_folder_is_put_back_or_removed(sources, tmp_path, capsys):
    """SIGKILL skips `finally`: between `_swap_in`'s two renames it leaves the earlier export only
    under a hidden .old name, and while writing, a half-written .tmp folder."""
    out = tmp_path / "X"
    convert(sources[0], out, to="diffusers")
    dead = _dead_pid()
    out.rename(tmp_path / f".X.{dead}.0badc0de.old")
    (tmp_path / f".X.{dead}.5eed5eed.tmp" / "unet").mkdir(parents=True)
    running = tmp_path / f".X.{os.getpid()}.00000000.tmp"  # another export, still running: not touched
    running.mkdir()
    with pytest.warns(UserWarning) as seen:
        diffusers_export.recover_leftovers(out)
    assert sorted(str(w.message).split(",")[0] for w in seen) == [
        f"put back {out}", f"removed {tmp_path / f'.X.{dead}.5eed5eed.tmp'}"]
    assert info(out, capsys)["components"] == ["unet", "vae"] and leftovers(tmp_path) == [running.name]
    running.rmdir()

    (tmp_path / f".X.{dead}.0badc0de.old").mkdir()  # killed after the swap: the new export is in place
    assert main(["convert", str(sources[1]), str(out), "--to", "diffusers", "--overwrite"]) == 0
    assert "ldm convert: warning: removed" in capsys.readouterr().err
    assert info(out, capsys)["components"] == ["vae"] and leftovers(tmp_path) == []


def test_a_diffusers_download_is_never_replaced(sources, tmp_path, capsys):
    """--overwrite replaced a downloaded SD folder whole, the user's notes and files beside it too;
    it now replaces only ldmkit's own exports (a pipeline's ldmkit.json, a lone model's mark)."""
    download = tmp_path / "download"
    convert(sources[0], download, to="diffusers")
    (download / diffusers_export.EXPORT_INFO).unlink()  # what a download lacks, and what it has:
    (download / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (download / "README.md").write_text("my notes\n")
    lone = tmp_path / "lone"
    convert(sources[1], lone, to="diffusers")
    assert json.loads((lone / "config.json").read_text())[diffusers_export.EXPORT_MARK] is True
    config = json.loads((lone / "config.json").read_text())
    del config[diffusers_export.EXPORT_MARK]
    (lone / "config.json").write_text(json.dumps(config))  # a downloaded model folder
    for folder in (download, lone):
        before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert main(["convert", str(sources[1]), str(folder), "--to", "diffusers", "--overwrite"]) == 2
        assert "holds a diffusers folder ldmkit did not write (a download?)" in capsys.readouterr().err
        assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
