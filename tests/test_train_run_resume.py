"""What a resume may change: not the classes (refused, naming both lists), anything else with a
note, and RUN/config.json and the model files never claim a setting the run did not train with."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ldmkit.errors import UserError
from ldmkit.train import apply_overrides, load_run_config, read_inference_metadata, run_training
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_color_dataset(tmp_path_factory.mktemp("colors"), per_class=4, size=8)


@pytest.fixture(scope="module")
def vae_run(data, tmp_path_factory) -> Path:
    """A run whose VAE stage has finished (--stage vae, 2 steps); copied by each test."""
    config = apply_overrides(micro_config(data, vae_steps=2, steps=2), {"stage": "vae"})
    return run_training(config, tmp_path_factory.mktemp("r") / "run")


@pytest.fixture
def run(vae_run, tmp_path) -> Path:
    return Path(shutil.copytree(vae_run, tmp_path / "run"))


def renamed(data: Path, folder: Path, names: dict[str, str]) -> Path:
    """A copy of `data` with its class folders renamed (the same images under other classes)."""
    for old, new in names.items():
        shutil.copytree(data / old, folder / new)
    return folder


def test_resume_on_other_classes_is_refused_naming_both(data, run, tmp_path):
    fruit = renamed(data, tmp_path / "fruit", {"blue": "apple", "green": "banana", "red": "cherry", "yellow": "date"})
    before = (run / "config.json").read_text()
    with pytest.raises(UserError, match=r"was trained on classes \[blue, green, red, yellow\], but --data .*fruit "
                                        r"has classes \[apple, banana, cherry, date\]: resuming would give"):
        run_training(micro_config(fruit, vae_steps=2, steps=2), run)
    flat = tmp_path / "flat"  # no class folders: unconditional data for a conditional run
    flat.mkdir()
    for image in data.rglob("*.png"):
        shutil.copy(image, flat / f"{image.parent.name}_{image.name}")
    with pytest.raises(UserError, match=r"classes \[blue, green, red, yellow\], but --data .*flat has no classes "
                                        r"\(unconditional\)"):
        run_training(micro_config(flat, vae_steps=2, steps=2), run)
    assert (run / "config.json").read_text() == before
    # the same classes from another folder are a change of --data like any other: noted, not refused
    run_training(micro_config(renamed(data, tmp_path / "copy", {c: c for c in ("blue", "green", "red", "yellow")}),
                              vae_steps=2, steps=2), run)
    assert load_run_config(run).data == str(tmp_path / "copy")


def test_changed_settings_are_noted_and_a_finished_stage_keeps_its_own(data, run, capsys):
    capsys.readouterr()
    config = micro_config(data, vae_steps=4, steps=2)  # 4: the finished VAE stage trained 2
    config.diffusion.batch_size, config.diffusion.lr = 4, 5e-4
    run_training(config, run)
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("note:")]
    assert note == ["note: settings differ from the checkpoint's (vae step 2); used from here on: "
                    "diffusion.batch_size 8 -> 4, diffusion.lr 0.001 -> 0.0005; "
                    "the VAE stage has finished and keeps vae.steps 2 (not 4)"], out
    saved = load_run_config(run)
    assert (saved.vae.steps, saved.diffusion.batch_size, saved.diffusion.lr) == (2, 4, 5e-4)
    assert read_inference_metadata(run / "vae.safetensors")["step"] == 2  # rewritten at this resume, truthfully
    assert read_inference_metadata(run / "model.safetensors")["run_config"]["vae"]["steps"] == 2
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resume = [row for row in rows if row.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 2 and resume[0]["kept"] == {"vae.steps": [2, 4]}
    assert resume[0]["changed"] == {"diffusion.batch_size": [8, 4], "diffusion.lr": [0.001, 0.0005]}

    # how the process runs (device, time limit, logging) is no setting of the run: no note
    config = micro_config(data, vae_steps=2, steps=3)
    config.diffusion.batch_size, config.diffusion.lr = 4, 5e-4
    config.time_limit, config.log_every, config.device = 60.0, 7, "cpu"
    run_training(config, run)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("note:")] == [
        "note: settings differ from the checkpoint's (diffusion step 2); used from here on: diffusion.steps 2 -> 3"]


def test_a_resume_with_the_same_settings_is_marked_in_the_log_too(data, run):
    """A crash after the last checkpoint logs steps the resume runs again; the mark says where to cut."""
    run_training(micro_config(data, vae_steps=2, steps=2), run)  # the fixture's own settings, diffusion stage
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resume = [row for row in rows if row.get("event") == "resume"]
    assert [(row["stage"], row["step"]) for row in resume] == [("vae", 2)]
    assert rows.index(resume[0]) < next(i for i, row in enumerate(rows) if row["stage"] == "diffusion")
