"""A resume's changed optimizer and EMA settings are the ones that train from then on.

`Optimizer.load_state_dict` and the EMA's own state bring back the checkpoint's weight decay,
betas, learning rate and decay; the resume note promises the new values ("used from here on").
"""
from __future__ import annotations

import pytest

from ldmkit.train import apply_overrides, load_training_state, run_training
from test_resume import _stop_after
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=4, size=8)


def _vae_config(data, **settings):
    config = micro_config(data, vae_steps=6, steps=2)
    return apply_overrides(config, {"stage": "vae", "vae.disc_layers": 1, **settings})


def test_vae_stage_resumed_with_new_weight_decay_disc_lr_and_gan(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _stop_after(monkeypatch, 2)
    run_training(_vae_config(data, disc_start=-1), run)  # no GAN: betas (0.9, 0.999)
    saved = load_training_state(run / "checkpoint.pt")["optimizer"]["param_groups"][0]
    assert (saved["weight_decay"], saved["betas"]) == (0.0, (0.9, 0.999))

    _stop_after(monkeypatch, 2)  # the counter is per patch: two more steps
    run_training(_vae_config(data, disc_start=3, **{"vae.weight_decay": 0.5, "vae.disc_lr": 0.05}), run)
    state = load_training_state(run / "checkpoint.pt")
    assert state["step"] == 4
    group = state["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], tuple(group["betas"])) == (0.5, (0.5, 0.9))  # the GAN's betas, the new decay

    _stop_after(monkeypatch, 1)
    run_training(_vae_config(data, disc_start=3, **{"vae.weight_decay": 0.5, "vae.disc_lr": 0.01}), run)
    state = load_training_state(run / "checkpoint.pt")
    assert state["disc_optimizer"]["param_groups"][0]["lr"] == 0.01  # the discriminator's saved state, new LR


def test_diffusion_stage_resumed_with_new_weight_decay_and_ema_decay(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _stop_after(monkeypatch, 2 + 1)  # the VAE's 2 steps, one diffusion step
    run_training(micro_config(data, vae_steps=2, steps=4), run)
    state = load_training_state(run / "checkpoint.pt")
    assert (state["stage"], state["step"], state["ema"]["decay"]) == ("diffusion", 1, 0.995)

    _stop_after(monkeypatch, 1)
    config = apply_overrides(micro_config(data, vae_steps=2, steps=4), {"weight_decay": 0.3, "ema_decay": 0.5})
    run_training(config, run)
    state = load_training_state(run / "checkpoint.pt")
    assert state["step"] == 2
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.3
    assert state["ema"]["decay"] == 0.5
