"""`vae.ema_decay`: the VAE stage keeps a moving average of the autoencoder's weights and hands
that average on (vae.safetensors, the diffusion stage, the model file); 0 hands on the last
step's weights.

The average is checked against its closed form over the recorded weight iterates, a resume in
the middle of the stage against the same run uninterrupted (bitwise on the CPU), and the
checkpoint's structure check against a damaged average.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.errors import UserError
from ldmkit.train import apply_overrides, load_training_state, run_training, vae_stage
from ldmkit.train.ema import EMA
from test_resume import _losses, _stop_after
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)

STEPS = 4
DECAY = 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=4, size=8)


def _config(data, **settings):
    return apply_overrides(micro_config(data, vae_steps=STEPS, steps=1), {"stage": "vae", **settings})


def _vae_weights(path) -> dict[str, torch.Tensor]:
    """The VAE's weights in a saved model file, by parameter name (`vae.` prefix dropped)."""
    return {k[len("vae."):]: v for k, v in load_file(path).items() if k.startswith("vae.")}


def _record_iterates(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The weights after each step, as the average is handed them."""
    iterates: list[dict[str, torch.Tensor]] = []
    real_update = EMA.update

    def update(self, model, gate=None):
        iterates.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return real_update(self, model, gate)

    monkeypatch.setattr(EMA, "update", update)
    return iterates


def test_the_handed_on_vae_is_the_moving_average_of_the_weights(data, tmp_path, monkeypatch):
    iterates = _record_iterates(monkeypatch)
    start: dict[str, torch.Tensor] = {}
    real_fresh = vae_stage.VAETrainer.fresh_start

    def fresh_start(self):
        real_fresh(self)
        start.update({k: v.detach().clone() for k, v in self.vae.named_parameters()})

    monkeypatch.setattr(vae_stage.VAETrainer, "fresh_start", fresh_start)
    run = run_training(_config(data, **{"vae.ema_decay": DECAY}), tmp_path / "run")
    assert len(iterates) == STEPS

    # ema_0 = the initial weights; ema_{n+1} = d_n ema_n + (1 - d_n) w_{n+1}, d_n = min(decay, (1 + n) / (10 + n))
    expected = dict(start)
    for n, weights in enumerate(iterates):
        d = min(DECAY, (1 + n) / (10 + n))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    saved = _vae_weights(run / "vae.safetensors")
    for k in expected:
        torch.testing.assert_close(saved[k].float(), expected[k].float(), rtol=1e-5, atol=1e-6, msg=k)
    last = iterates[-1]
    assert any(not torch.allclose(saved[k].float(), last[k].float()) for k in expected), \
        "the saved VAE is the last step's weights, not their average"
    state = load_training_state(run / "checkpoint.pt")
    assert state["complete"] and state["vae_ema"] is None  # a finished stage keeps only the VAE it hands on
    for k in expected:
        torch.testing.assert_close(state["vae"][k].float(), expected[k].float(), rtol=1e-5, atol=1e-6)


def test_without_the_setting_the_last_weights_are_handed_on(data, tmp_path, monkeypatch):
    last: dict[str, torch.Tensor] = {}
    real_step = vae_stage.VAETrainer.train_step

    def train_step(self, images):
        out = real_step(self, images)
        last.update({k: v.detach().clone() for k, v in self.vae.named_parameters()})
        return out

    monkeypatch.setattr(vae_stage.VAETrainer, "train_step", train_step)
    run = run_training(_config(data, **{"vae.ema_decay": 0}), tmp_path / "run")
    saved = _vae_weights(run / "vae.safetensors")
    for k, v in last.items():
        assert torch.equal(saved[k], v), k
    assert load_training_state(run / "checkpoint.pt")["vae_ema"] is None


def test_a_resume_in_the_middle_continues_the_average_exactly(data, tmp_path, monkeypatch):
    settings = {"vae.ema_decay": DECAY}
    whole = run_training(_config(data, **settings), tmp_path / "whole")
    parts = tmp_path / "parts"
    _stop_after(monkeypatch, 2)
    run_training(_config(data, **settings), parts)
    state = load_training_state(parts / "checkpoint.pt")
    assert (state["step"], state["complete"]) == (2, False)
    assert state["vae_ema"]["num_updates"] == 2 and isinstance(state["vae_ema"]["module"], dict)
    monkeypatch.undo()
    run_training(_config(data, **settings), parts)
    assert _losses(parts) == _losses(whole)
    a, b = load_file(whole / "vae.safetensors"), load_file(parts / "vae.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_that_turns_the_average_on_starts_it_from_the_resumed_weights(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _stop_after(monkeypatch, STEPS - 1)
    run_training(_config(data, **{"vae.ema_decay": 0}), run)  # no average kept
    resumed = {k: v.clone() for k, v in load_training_state(run / "checkpoint.pt")["vae"].items()}
    monkeypatch.undo()
    iterates = _record_iterates(monkeypatch)
    run_training(_config(data, **{"vae.ema_decay": DECAY}), run)  # the last step, with the average
    assert len(iterates) == 1
    saved = _vae_weights(run / "vae.safetensors")
    d0 = min(DECAY, 1 / 10)  # the warm-up's first decay
    for k, new in iterates[0].items():
        torch.testing.assert_close(saved[k].float(), d0 * resumed[k].float() + (1 - d0) * new.float(),
                                   rtol=1e-5, atol=1e-6, msg=k)


def test_a_run_from_before_the_setting_reads_as_no_average_and_its_resume_says_so(data, tmp_path, monkeypatch,
                                                                                capsys):
    from ldmkit.train import load_run_config
    from ldmkit.train.checkpoint import save_training_state

    run = tmp_path / "run"
    _stop_after(monkeypatch, 2)
    run_training(_config(data, **{"vae.ema_decay": 0}), run)
    monkeypatch.undo()
    # what a run folder written before vae.ema_decay existed holds: neither config names the field
    state = load_training_state(run / "checkpoint.pt")
    del state["config"]["vae"]["ema_decay"]
    save_training_state(run / "checkpoint.pt", state)
    old = json.loads((run / "config.json").read_text())
    del old["vae"]["ema_decay"]
    (run / "config.json").write_text(json.dumps(old))
    assert load_run_config(run).vae.ema_decay == 0.0  # the behaviour it ran with, not today's default

    capsys.readouterr()
    run_training(_config(data), run)  # today's default: the average, from the resumed weights
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert note == ["note: settings differ from the checkpoint's (vae step 2); used from here on: "
                    "vae.ema_decay 0.0 -> 0.99"], note
    assert load_run_config(run).vae.ema_decay == 0.99
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [row["changed"] for row in rows if row.get("event") == "resume"] == [{"vae.ema_decay": [0.0, 0.99]}]


def test_a_damaged_average_in_a_checkpoint_is_one_line(data, tmp_path, monkeypatch):
    from ldmkit.train.checkpoint import check_run_state

    run = tmp_path / "run"
    _stop_after(monkeypatch, 2)
    run_training(_config(data, **{"vae.ema_decay": DECAY}), run)
    state = load_training_state(run / "checkpoint.pt")
    state["vae_ema"] = {"decay": DECAY}
    with pytest.raises(UserError, match="moving average is damaged"):
        check_run_state(state, run / "checkpoint.pt")


def test_the_average_is_on_by_default():
    from ldmkit.train.config import TRAIN_PRESETS, preset_config

    assert all(preset_config(name).vae.ema_decay == 0.99 for name in TRAIN_PRESETS)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_a_decay_outside_0_1_is_one_line(value):
    from ldmkit.train.config import preset_config, validate

    config = apply_overrides(preset_config("tiny"), {"vae.ema_decay": value})
    with pytest.raises(UserError, match=r"vae.ema_decay must be in \[0, 1\)"):
        validate(config)
