"""The `ldm` command as a user meets it: help for every verb, clear one-line errors for
mistakes (exit status 2, no traceback), and generate / info / eval on a tiny random model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_class_model

from ldmkit.cli import VERBS, build_parser, main
from ldmkit.errors import UserError

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A random tiny class-conditional model at 16 px (f4 VAE -> 4x4 latents)."""
    return save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", CLASSES, step=7)


def test_every_verb_has_help_for_every_flag(capsys):
    parser = build_parser()
    names = {verb.__name__.rsplit(".", 1)[-1] for verb in VERBS}
    assert {"train", "generate", "info", "eval", "convert"} <= names
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"ldm {name}: flag {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("verb", [verb.__name__.rsplit(".", 1)[-1] for verb in VERBS])
def test_an_unknown_flag_shows_the_verbs_usage(verb, capsys):
    """It showed `usage: ldm [-h] [--version] VERB ...`, naming neither the verb nor its flags (a verb
    with required arguments names those first)."""
    with pytest.raises(SystemExit) as stop:
        main([verb, "--bogus"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"usage: ldm {verb} ") and f"\nldm {verb}: error: " in err
    if verb in ("generate", "serve"):
        assert err.rstrip().endswith(f"ldm {verb}: error: unrecognized arguments: --bogus")


def test_ldm_without_a_verb_prints_its_help_as_a_usage_error(capsys):
    assert main([]) == 2
    assert "Run `ldm VERB --help`" in capsys.readouterr().err


def test_ldm_help_runs_as_a_console_script():
    out = subprocess.run([sys.executable, "-m", "ldmkit.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "generate" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/folder", "--out", "RUN"], "/no/such/folder"),
    (["generate", "--model", "/no/such/model.safetensors"], "/no/such/model.safetensors"),
    (["info", "/no/such/run"], "/no/such/run"),
    (["eval", "--data", "emoji"], "--model"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [(["--batch-size", "0"], "--batch-size"),
                                            (["--prompt", "a cat"], "no prompt")])
def test_generate_mistakes_stop_before_the_progress_bar(model_file, flags, message, capsys, tmp_path):
    argv = ["generate", "--model", str(model_file), "--n", "2", "--steps", "2", "--out", str(tmp_path), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "generating" not in err and len(err.strip().splitlines()) == 1


def test_under_torchrun_each_process_says_which_rank_it_is(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["info", "/no/such/run"]) == 2
    assert capsys.readouterr().err.startswith("ldm info (rank 1 of 2): error: ")


def test_under_torchrun_rank_zero_says_a_shared_error_first(capsys, monkeypatch):
    """Every rank printed the same mistake, and torchrun ended rank 0, the one that owns the log, first."""
    import ldmkit.cli

    said: list[str] = []
    monkeypatch.setattr(ldmkit.cli.time, "sleep", lambda s: said.append(f"waited {s} s"))
    monkeypatch.setattr(ldmkit.cli, "print_line", said.append)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(["info", "/no/such/run"]) == 2
    assert said[0].startswith("ldm info (rank 0 of 2): error: ")
    assert said[1:3] == [f"waited {ldmkit.cli.RANK_ERROR_DELAY_S} s", said[2]]  # torchrun ends it meanwhile
    assert said[2].startswith("ldm info (rank 1 of 2): error: ") and len(said) == 3


def test_generate_writes_named_pngs_and_a_grid(model_file, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["generate", "--model", str(model_file), "--class", "green", "blue", "--n", "2", "--steps", "3",
                 "--seed", "5", "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("0*.png"))
    assert names == ["00000_seed5_class1.png", "00001_seed6_class1.png",
                     "00002_seed7_class2.png", "00003_seed8_class2.png"]
    assert Image.open(out / names[0]).size == (16, 16)
    assert (out / "grid.png").is_file()


def test_generate_same_seed_same_image_whatever_the_batch_size(model_file, tmp_path):
    for batch in (1, 3):
        assert main(["generate", "--model", str(model_file), "--n", "3", "--steps", "3", "--batch-size", str(batch),
                     "--out", str(tmp_path / f"b{batch}"), "--quiet"]) == 0
    for name in ("00000_seed0_class0.png", "00002_seed2_class2.png"):
        a = np.asarray(Image.open(tmp_path / "b1" / name))
        b = np.asarray(Image.open(tmp_path / "b3" / name))
        assert np.array_equal(a, b)


def test_generate_unknown_class_names_the_choices(model_file, tmp_path, capsys):
    assert main(["generate", "--model", str(model_file), "--class", "purple", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "purple" in err and "0=red" in err


def test_info_prints_classes_step_and_counts(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "0=red, 1=green, 2=blue" in out and "step:         7" in out and "M parameters" in out
    assert main(["info", str(model_file), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["class_names"] == CLASSES and meta["image_size"] == 16


def test_info_says_a_stopped_runs_step_against_its_planned_steps(model_file, tmp_path, capsys):
    """A run stopped at step 12 of 100 showed "step: 12"; a VAE-only file showed a prediction and a null schedule."""
    from ldmkit.train.inference_file import load_inference_file, save_inference_file

    unet, vae, meta = load_inference_file(model_file)
    extra = {"schedule": meta["schedule"], "class_names": CLASSES, "step": 12}
    save_inference_file(tmp_path / "model.safetensors", unet=unet, vae=vae, extra=extra,
                        run_config={"diffusion": {"steps": 100}, "vae": {"steps": 40}})
    assert main(["info", str(tmp_path / "model.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "step:         12 of 100 (the diffusion stage; unfinished: run its ldm train command again" in out
    save_inference_file(tmp_path / "vae.safetensors", unet=None, vae=vae, extra={"step": 40},
                        run_config={"vae": {"steps": 40}})
    assert main(["info", str(tmp_path / "vae.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "step:         40 of 40 (the VAE stage)\n" in out and "vae config:" in out
    assert "prediction:" not in out and "schedule:" not in out and "unet config:" not in out


def test_eval_reads_an_npz_of_samples(tmp_path, capsys):
    """`ldm eval --samples FILE.npz` (the peer's format) against a real folder dataset."""
    data = tmp_path / "data"
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 12), ("val", 6)):
        for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
            folder = data / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(0, 40, (16, 16, 3), generator=gen).numpy().astype("uint8")
                Image.fromarray(np.clip(np.array(colour, dtype="uint8") + noise, 0, 255).astype("uint8")).save(
                    folder / f"{i}.png")
    images = (torch.rand(10, 3, 16, 16, generator=gen) * 255).to(torch.uint8).numpy()
    np.savez(tmp_path / "s.npz", images=images, labels=np.arange(10) % 2)
    report = tmp_path / "r.json"
    code = main(["eval", "--data", str(data), "--samples", str(tmp_path / "s.npz"), "--image-size", "16",
                 "--features", "classifier", "--train-classifier", "--classifier-epochs", "1", "--kid-subsets", "2",
                 "--device", "cpu", "--out", str(report)])
    assert code == 0
    result = json.loads(report.read_text())["results"][0]
    # Uniform noise images are far from the two colour clusters: worse than the real baseline.
    assert result["metrics"]["FD_classifier"]["model"] > result["metrics"]["FD_classifier"]["real"]


def test_train_set_reaches_any_config_field_with_type_checks():
    from ldmkit.cli.train import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "emoji", "--out", "RUN", "--set", "ema_decay=0.9", "--set",
                              "vae.lr=1e-4", "--set", "diffusion.prediction=v", "--set", "checkpoint_every=7"])
    config = config_from_args(args)
    assert config.diffusion.ema_decay == 0.9 and config.vae.lr == 1e-4
    assert config.diffusion.prediction == "v" and config.checkpoint_every == 7
    for bad in (["--set", "no_such_field=1"], ["--set", "checkpoint_every=often"], ["--set", "novalue"]):
        assert main(["train", "--data", "emoji", "--out", "RUN", *bad]) == 2


def test_train_set_reaches_model_fields_and_writes_null():
    from ldmkit.cli.train import config_from_args
    from ldmkit.train.run import _resolve_models

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "emoji", "--out", "RUN", "--preset", "fashion-mnist",
                              "--set", "min_snr_gamma=null", "--set", "diffusion.model.attention_levels=[1,2]",
                              "--set", "vae.model.block_channels=[32,64]", "--set", "vae.model.latent_channels=4"])
    config = config_from_args(args)
    assert config.diffusion.min_snr_gamma is None  # the preset's 5.0, turned off
    assert config.diffusion.model["attention_levels"] == [1, 2] and config.diffusion.model["base_channels"] == 64
    _resolve_models(config, channels=1, num_classes=10)
    assert list(config.vae.model["block_channels"]) == [32, 64] and config.diffusion.model["in_channels"] == 4
    for bad in (["--set", "diffusion.model.no_such_field=1"], ["--set", "steps=null"]):
        assert main(["train", "--data", "emoji", "--out", "RUN", *bad]) == 2


def test_train_compile_mode_comes_from_the_preset_and_the_flag():
    from ldmkit.cli.train import config_from_args
    from ldmkit.train.config import validate

    parser = build_parser()
    small = config_from_args(parser.parse_args(["train", "--data", "emoji", "--out", "RUN", "--preset", "small"]))
    base = config_from_args(parser.parse_args(["train", "--data", "emoji", "--out", "RUN", "--preset", "base"]))
    assert small.compile_mode == "reduce-overhead" and base.compile_mode == "reduce-overhead"
    flag = config_from_args(
        parser.parse_args(["train", "--data", "emoji", "--out", "RUN", "--compile-mode", "default"])
    )
    assert flag.compile_mode == "default"
    bad = config_from_args(
        parser.parse_args(["train", "--data", "emoji", "--out", "RUN", "--set", "compile_mode=fast"])
    )
    with pytest.raises(UserError, match="compile_mode must be one of"):
        validate(bad)
    assert small.step_graph  # the whole-step CUDA graph is the default (used where step_graph_wanted)
    for flag, wanted in (("--no-step-graph", False), ("--step-graph", True)):
        args = parser.parse_args(["train", "--data", "emoji", "--out", "RUN", flag])
        assert config_from_args(args).step_graph is wanted


def test_help_names_each_default_once_and_never_none():
    """`ldm VERB --help` shows a flag's default where it has one to show (0 included), and never
    "(default: None)", "(default: False)" or a second default after the one the help text names."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.help is None or action.dest == "help":
                continue
            params = {**vars(action), "prog": name}
            shown = formatter._get_help_string(action) % params
            where = f"ldm {name} {action.option_strings}: {shown}"
            if "default" in action.help.lower():
                assert shown == action.help % params, where
            else:
                assert shown.lower().count("default") <= 1, where
            for empty in ("(default: None)", "(default: False)", "(default: [])"):
                assert empty not in shown, where
    eval_help = subparsers.choices["eval"].format_help()
    assert "seed of the first sample (default: 0)" in " ".join(eval_help.split())


def test_a_file_system_refusal_is_one_line(model_file, tmp_path, capsys):
    """Writing under a file (not a folder) fails in the file system: one line and exit 1, not a
    traceback, for training and for conversion alike."""
    (tmp_path / "a_file").write_text("x")
    assert main(["train", "--data", "emoji", "--preset", "tiny", "--out", str(tmp_path / "a_file" / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ldm train: error: Not a directory") and len(err.strip().splitlines()) == 1
    assert main(["convert", str(model_file), str(tmp_path / "a_file" / "out.safetensors")]) == 1
    assert "ldm convert: error: Not a directory" in capsys.readouterr().err


def test_a_safetensors_write_failure_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from ldmkit.atomic import atomic_save_safetensors

    def failing(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: disk quota exceeded")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk quota exceeded") as raised:
        atomic_save_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    assert raised.value.filename == str(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_info_names_a_built_in_datasets_folder_as_the_training_machines():
    from ldmkit.cli.info import _dataset

    assert _dataset("fashion-mnist:.carry/fmnist") == "fashion-mnist (read from .carry/fmnist where it was trained)"
    assert _dataset("emoji") == "emoji"
    assert _dataset("data/cats") == "data/cats"  # a folder: the path is the dataset's name
    assert _dataset(None) == "-"
    assert _dataset(os.fsdecode(b"data/B\xff")) == "data/B\\xff"  # printable, as the training log wrote it


def test_a_user_error_is_a_value_error_for_python_callers():
    import torch

    from ldmkit.diffusion import NoiseSchedule, sample

    with pytest.raises(ValueError, match="unknown sampler"):  # `except ValueError` catches ldmkit's refusals
        sample(lambda x, t: x, torch.zeros(1, 2), NoiseSchedule.create(), sampler="plms")


def test_help_imports_no_torch():
    """`ldm --help` and every verb's help without torch (its import was ~1.8 s of a 2 s --help on a
    laptop); each verb imports what it runs with inside `run`."""
    probe = ("import sys\nfrom ldmkit.cli import VERBS, _verb_parser, build_parser\nparser = build_parser()\n"
             "helps = [parser.format_help()] + [_verb_parser(parser, v.__name__.rsplit('.', 1)[-1].removesuffix("
             "'_verb')).format_help() for v in VERBS]\nprint(len(helps), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(len(VERBS) + 1), "False"], out
