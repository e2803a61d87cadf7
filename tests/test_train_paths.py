"""`ldm train`'s refusals before any file is written, and what it says about odd requests:
a run folder overlapping the data, an empty --out, a precision the device lacks, a dataset too
large for memory, a resume already past --steps, a VAE that would stay untrained. (A run folder
that already holds something: test_train_run_folder.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from ldmkit.cli import main
from ldmkit.data import memory
from ldmkit.train import run_training
from ldmkit.train.run_paths import check_run_folder
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)

# Settings that keep a run short should a refusal ever stop happening (then the test fails).
QUICK = ["--quiet", "--device", "cpu", "--image-size", "16", "--vae-steps", "1", "--steps", "1",
         "--batch-size", "8", "--set", "vae.batch_size=8", "--set", "sample_every=0", "--set", "val_every=0"]


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def train(capsys, *flags: str) -> tuple[int, str]:
    """Run `ldm train` in-process: (exit status, stderr)."""
    status = main(["train", *QUICK, *flags])
    return status, capsys.readouterr().err


@pytest.fixture
def no_data(monkeypatch) -> None:
    """Loading the data fails the test: these refusals need none, so they come before it."""
    def never(*args, **kwargs):
        raise AssertionError("the data was loaded before a refusal that needs none")

    monkeypatch.setattr("ldmkit.train.run.load_image_dataset", never)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_color_dataset(tmp_path / "colors" / "train", per_class=4, size=8).parent


@pytest.mark.parametrize("out, message", [
    (".", "is the --data folder"),
    ("runs/first", "is inside the --data folder"),
    ("train/red", "is inside the --data folder"),
])
def test_run_folder_in_the_data_is_refused(data: Path, capsys, no_data, out: str, message: str) -> None:
    before = files_under(data)
    status, err = train(capsys, "--data", str(data), "--out", str(data / out))
    assert status == 2 and message in err and "ldm train: error:" in err
    assert files_under(data) == before, "nothing written into the data"


def test_run_folder_reached_through_a_symlink_is_refused(data: Path, tmp_path: Path, capsys, no_data) -> None:
    (tmp_path / "link").symlink_to(data)
    status, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "link" / "run"))
    assert status == 2 and "is inside the --data folder" in err


def test_data_inside_the_run_folder_is_refused(data: Path, capsys, no_data) -> None:
    status, err = train(capsys, "--data", str(data), "--out", str(data.parent))
    assert status == 2 and "is inside the --out folder" in err
    assert not (data.parent / "config.json").exists()


def test_built_in_datasets_have_no_folder_to_protect(tmp_path: Path) -> None:
    check_run_folder("emoji", "emoji")
    check_run_folder(f"fashion-mnist:{tmp_path}", tmp_path)
    check_run_folder(str(tmp_path / "data"), tmp_path / "data2")  # a shared prefix is not nesting


def test_empty_out_is_refused(data: Path, tmp_path: Path, capsys, monkeypatch, no_data) -> None:
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in ("", "  "):
        status, err = train(capsys, "--data", str(data), "--out", out)
        assert status == 2 and "--out is empty" in err
    assert files_under(here) == []


def test_refused_precision_leaves_no_run_folder(data: Path, tmp_path: Path, capsys, no_data) -> None:
    status, err = train(capsys, "--data", str(data), "--precision", "fp16", "--out", str(tmp_path / "p16"))
    assert status == 2 and "fp16 needs a CUDA device" in err
    assert not (tmp_path / "p16").exists()


def test_image_size_the_models_cannot_take_is_refused_before_loading(tmp_path: Path, capsys, no_data) -> None:
    status = main(["train", "--data", "emoji", "--image-size", "1000", "--out", str(tmp_path / "x"),
                   "--vae-steps", "1", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "latents of 250 px do not divide by the UNet's downsample factor 4" in err
    assert not (tmp_path / "x").exists()


def test_dataset_too_large_for_memory_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 10**9)

    def never(*args, **kwargs):
        raise AssertionError("resized before the memory check")

    monkeypatch.setattr("ldmkit.data.emoji.fit_uint8_images", never)
    status = main(["train", "--data", "emoji", "--image-size", "1024", "--out", str(tmp_path / "x"),
                   "--vae-steps", "1", "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "emoji [train] at 1024 px would take 5.7 GB of memory" in err and "smaller --image-size" in err
    assert not (tmp_path / "x").exists()


def test_resume_past_the_steps_says_why_nothing_trains(data: Path, tmp_path: Path, capsys) -> None:
    run_training(micro_config(data, vae_steps=1, steps=3), tmp_path / "run")
    capsys.readouterr()
    run_training(micro_config(data, vae_steps=1, steps=2), tmp_path / "run")
    out = capsys.readouterr().out
    assert "is already trained to step 3 (--steps 2): nothing to do; raise --steps to train further" in out
    # without its model file, the run writes it again from the checkpoint, and says why it trains nothing
    (tmp_path / "run" / "model.safetensors").unlink()
    run_training(micro_config(data, vae_steps=1, steps=2), tmp_path / "run")
    out = capsys.readouterr().out
    assert "already at diffusion step 3, past --steps 2: nothing to train" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_untrained_vae_is_warned_about(data: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="--vae-steps 0 without --vae: the VAE keeps its random weights"):
        run_training(micro_config(data, vae_steps=0, steps=1), tmp_path / "run")
    with pytest.warns(UserWarning, match="--steps 0: model.safetensors will hold an untrained UNet"):
        run_training(micro_config(data, vae_steps=1, steps=0), tmp_path / "run0")


def test_an_unusable_val_folder_is_a_warning_and_training_goes_on(tmp_path, capsys):
    """A flat val/ beside a train/ of classes was said only in the log, among the stage's lines."""
    data = tmp_path / "data"
    write_color_dataset(data / "train", per_class=4, size=8)
    write_color_dataset(tmp_path / "flat", per_class=1, size=8)
    (data / "val").mkdir()
    for image in (tmp_path / "flat").rglob("*.png"):
        image.rename(data / "val" / f"{image.parent.name}.png")
    status, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "run"))
    assert status == 0, err
    assert (f"ldm train: warning: no validation split, so no val loss: '{data / 'val'}' has no class subfolders "
            "but the train set has classes") in err


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_arithmetic_is_warned(data: Path, tmp_path: Path, capsys, monkeypatch, native):
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    status, err = train(capsys, "--data", str(data), "--precision", "bf16", "--stage", "vae",
                        "--out", str(tmp_path / f"bf16-{native}"))
    assert status == 0
    warned = "ldm train: warning: precision bf16 on this CPU, which has no bf16 arithmetic of its own" in err
    assert warned == (not native) and (not warned or "pass --precision fp32" in err)
    assert err.count("has no bf16 arithmetic") <= 1


def test_fp32_on_such_a_cpu_is_not_warned(data: Path, tmp_path: Path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    status, err = train(capsys, "--data", str(data), "--precision", "fp32", "--stage", "vae",
                        "--out", str(tmp_path / "fp32"))
    assert status == 0 and "bf16 arithmetic" not in err
