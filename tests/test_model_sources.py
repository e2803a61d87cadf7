"""What `--model` / `--vae` names reach: a folder of images named like a bundled model does not hide
it (`ldm generate --out emoji` works), a bundled model is named as such in messages, and a run's
other files, or a run with no model yet, are named for what they are instead of failing to parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ldmkit import pretrained
from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.interop import load_bundle
from ldmkit.train.inference_file import read_inference_metadata


def test_generate_out_named_like_the_bundled_model(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second time the folder holds the first run's images
        assert main(["generate", "--model", "emoji", "--steps", "1", "--out", "emoji", "--device", "cpu",
                     "--quiet"]) == 0
    assert len(list((tmp_path / "emoji").glob("0*.png"))) == 3
    assert pretrained.resolve_model_source("emoji") == registry / "emoji.safetensors"


def test_a_model_folder_named_like_the_bundled_model_still_wins(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "emoji").mkdir()
    (tmp_path / "emoji" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert pretrained.resolve_model_source("emoji") == "emoji"


def test_a_bundled_model_is_named_by_its_name(registry):
    assert load_bundle("emoji").source == "the bundled model 'emoji'"
    with pytest.raises(UserError, match="^tokenizer applies only to CompVis single-file checkpoints, not the "
                                        "bundled model 'emoji'$"):
        load_bundle("emoji", tokenizer="somewhere")
    with pytest.raises(UserError, match="^unknown loading option foo; the options are image_size, prediction and, "
                                        "for CompVis single-file checkpoints, use_ema, tokenizer"):
        load_bundle("emoji", foo=1)


def test_the_compvis_options_named_in_messages_are_the_readers_own():
    import inspect

    from ldmkit.interop.bundle import COMPVIS_OPTIONS
    from ldmkit.interop.compvis_checkpoint import read_compvis_checkpoint

    keywords = [name for name, p in inspect.signature(read_compvis_checkpoint).parameters.items()
                if p.kind is p.KEYWORD_ONLY]
    assert list(COMPVIS_OPTIONS) == keywords


def _run_folder(root: Path, *, model: bool) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"vae": {}, "diffusion": {}, "image_size": 16}))
    (run / "log.jsonl").write_text("")
    torch.save({"step": 5}, run / "checkpoint.pt")
    save_file({"latents": torch.zeros(2, 4)}, str(run / "latents.safetensors"), metadata={"format": "latents"})
    if model:
        (run / "model.safetensors").write_bytes((pretrained.bundled_dir() / "emoji.safetensors").read_bytes())
    return run


def test_a_run_still_training_is_named_as_one(registry, tmp_path, capsys):
    run = _run_folder(tmp_path, model=False)
    with pytest.raises(UserError, match="is an ldmkit run with no model yet: model.safetensors appears once its "
                                        "training reaches the UNet stage"):
        load_bundle(run)
    (run / "log.jsonl").unlink()
    (run / "checkpoint.pt").unlink()  # what a run refused at once used to leave: its config.json only
    assert main(["info", str(run)]) == 2
    assert "is an ldmkit run with no model yet" in capsys.readouterr().err


@pytest.mark.parametrize("name, what", [("checkpoint.pt", "the training checkpoint"),
                                        ("latents.safetensors", "the cache of the encoded dataset")])
def test_a_runs_other_files_are_named_for_what_they_are(registry, tmp_path, name, what):
    run = _run_folder(tmp_path, model=True)
    expected = f"{run / name} is {what}.* of the ldmkit run {run}, not a model: pass the run folder {run} " \
               "\\(its model.safetensors\\)"
    with pytest.raises(UserError, match=expected):
        load_bundle(run / name)
    with pytest.raises(UserError, match=expected):
        read_inference_metadata(run / name)  # what `ldm train --vae` reads


def test_another_projects_safetensors_is_not_an_ldmkit_model(tmp_path):
    hf = tmp_path / "hf.safetensors"
    save_file({"w": torch.zeros(2)}, str(hf), metadata={"format": "pt"})  # not JSON, as Hugging Face writes
    with pytest.raises(UserError, match="is a safetensors file but not an ldmkit model file"):
        read_inference_metadata(hf)


def test_vae_takes_a_bundled_models_name(registry):
    from ldmkit.train.inference_file import load_inference_file

    unet, vae, meta = load_inference_file("emoji", require_unet=False)  # what `ldm train --vae emoji` reads
    assert unet is not None and vae.config.in_channels == 3 and meta["class_names"] == ["red", "green", "blue"]
