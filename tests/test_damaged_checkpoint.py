"""A run's checkpoint with the right format tag but damaged inside: one line on resume, naming
the file and what is wrong, and the file left as it is (never a KeyError / RuntimeError traceback)."""
from __future__ import annotations

import shutil

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.train import load_training_state, run_training
from ldmkit.train.checkpoint import save_training_state
from test_resume import _stop_after
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=4, size=8)


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run stopped at diffusion step 1 (and one stopped in its VAE stage, at step 1)."""
    mp = pytest.MonkeyPatch()
    runs = tmp_path_factory.mktemp("runs")
    _stop_after(mp, 2 + 1)
    run_training(micro_config(data, vae_steps=2, steps=3), runs / "diffusion")
    _stop_after(mp, 1)
    run_training(micro_config(data, vae_steps=2, steps=3), runs / "vae")
    mp.undo()
    return runs


def _damaged(run, tmp_path, change):
    copy = shutil.copytree(run, tmp_path / "run")
    state = load_training_state(copy / "checkpoint.pt")
    change(state)
    state.pop("format"), state.pop("format_version")
    save_training_state(copy / "checkpoint.pt", state)
    return copy


def _wrong_unet_shape(state):
    name = next(iter(state["unet"]))
    state["unet"][name] = torch.zeros(3)


def _wrong_vae_shape(state):
    name = next(iter(state["vae"]))
    state["vae"][name] = torch.zeros(3)


@pytest.mark.parametrize("stage, change, message", [
    ("diffusion", lambda s: s.pop("ema"), r"is damaged \(ema is missing\)"),
    ("diffusion", lambda s: s.update(step="abc"), r"is damaged \(step is 'abc'\)"),
    ("diffusion", lambda s: s.update(unet=[1]), r"is damaged \(unet is \[1\]\)"),
    ("diffusion", lambda s: s["ema"].pop("module"), "is damaged .the EMA's weights are missing"),
    ("diffusion", lambda s: s.update(stage="other"), r"is damaged \(stage 'other'\)"),
    ("diffusion", _wrong_unet_shape, r"does not hold what this run needs \(RuntimeError: Error\(s\) in loading"),
    ("vae", lambda s: s.pop("optimizer"), r"is damaged \(optimizer is missing\)"),
    ("vae", _wrong_vae_shape, r"does not hold what this run needs \(RuntimeError"),
])
def test_a_damaged_checkpoint_is_one_line_and_left_in_place(data, stopped_run, tmp_path, stage, change, message):
    run = _damaged(stopped_run / stage, tmp_path, change)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match=rf"checkpoint .*checkpoint.pt {message}.*restore a copy, or start over"):
        run_training(micro_config(data, vae_steps=2, steps=3), run)
    assert (run / "checkpoint.pt").read_bytes() == before
