"""Exact resume: a run stopped and resumed equals the same run uninterrupted, bitwise on CPU.

The interruption goes through the real stop path (what SIGTERM triggers): after k optimizer
steps the stop flag is raised, the trainer writes its checkpoint and returns; running the
same command again continues. Both the VAE stage and the diffusion stage are interrupted.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.errors import UserError
from ldmkit.train import load_training_state, run_training
from ldmkit.train.step_guard import StepGuard
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)

VAE_STEPS, STEPS = 4, 6


def _losses(run_dir):
    """{(stage, step): loss} from log.jsonl (a resumed run's later lines win)."""
    losses = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            losses[(row["stage"], row["step"])] = row["loss"]
    return losses


def _stop_after(monkeypatch, steps: int) -> None:
    """Raise the stop flag after `steps` optimizer steps (StepGuard.record runs once per step)."""
    real_record = StepGuard.record
    calls = {"n": 0}

    def record(self, row):
        calls["n"] += 1
        if calls["n"] == steps:
            self.stop.request("test")
        return real_record(self, row)

    monkeypatch.setattr(StepGuard, "record", record)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two diffusion-stage checkpoints hold the same position, weights, EMA and optimizer state, bitwise."""
    assert a["step"] == b["step"] and a["offset"] == b["offset"]
    for key in ("unet", "vae"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    for name, tensor in a["ema"]["module"].items():
        assert torch.equal(tensor, b["ema"]["module"][name]), f"ema.{name}"
    for slot, values in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][slot][k]) for k, v in values.items())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=6, size=8)


def test_stop_and_resume_matches_uninterrupted_run(tmp_path, data, monkeypatch):
    config = micro_config(data, vae_steps=VAE_STEPS, steps=STEPS)
    whole = run_training(config, tmp_path / "whole")

    parts = tmp_path / "parts"
    _stop_after(monkeypatch, 2)  # in the VAE stage
    run_training(micro_config(data, vae_steps=VAE_STEPS, steps=STEPS), parts)
    state = load_training_state(parts / "checkpoint.pt")
    assert (state["stage"], state["step"], state["complete"]) == ("vae", 2, False)
    assert not (parts / "model.safetensors").exists()

    _stop_after(monkeypatch, (VAE_STEPS - 2) + 3)  # finish the VAE, 3 diffusion steps
    run_training(micro_config(data, vae_steps=VAE_STEPS, steps=STEPS), parts)
    assert (load_training_state(parts / "checkpoint.pt")["stage"],
            load_training_state(parts / "checkpoint.pt")["step"]) == ("diffusion", 3)
    monkeypatch.undo()
    run_training(micro_config(data, vae_steps=VAE_STEPS, steps=STEPS), parts)

    expected, got = _losses(whole), _losses(parts)
    assert len(expected) == VAE_STEPS + STEPS
    assert got == expected  # every loss, bitwise
    a, b = load_training_state(whole / "checkpoint.pt"), load_training_state(parts / "checkpoint.pt")
    assert a["step"] == STEPS
    assert_same_training_state(a, b)
    wa, wb = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_into_other_architecture_is_refused(tmp_path, data):
    run_training(micro_config(data, vae_steps=2, steps=2), tmp_path / "run")
    other = micro_config(data, vae_steps=2, steps=4)
    other.diffusion.model["base_channels"] = 8
    with pytest.raises(UserError, match="different architecture.*base_channels"):
        run_training(other, tmp_path / "run")
    # more steps with the same architecture is a plain resume
    run_training(micro_config(data, vae_steps=2, steps=4), tmp_path / "run")
    assert load_training_state(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    with pytest.raises(UserError, match="nothing to resume"):
        run_training(micro_config(data, vae_steps=2, steps=2), tmp_path / "new", resume=True)
