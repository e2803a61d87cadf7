"""`vae.lr_schedule=cosine` decays the autoencoder's LR to zero at its last step, as the diffusion
stage's `lr_schedule` does; the default stays constant after the warm-up."""
from __future__ import annotations

import json

import pytest

from ldmkit.errors import UserError
from ldmkit.train import apply_overrides, run_training
from ldmkit.train.lr import lr_at
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


def _vae_lrs(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [row["lr"] for row in rows if row.get("stage") == "vae" and "lr" in row]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_vae_stage_follows_its_lr_schedule(tmp_path, schedule):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    config = apply_overrides(micro_config(data, vae_steps=6, steps=1), {"stage": "vae", "vae.lr_schedule": schedule})
    run = run_training(config, tmp_path / "run")
    expected = [lr_at(step, base_lr=config.vae.lr, warmup=2, total_steps=6, schedule=schedule) for step in range(6)]
    assert _vae_lrs(run) == pytest.approx(expected)
    assert (expected[-1] < 0.2 * config.vae.lr) == (schedule == "cosine")


def test_an_unknown_vae_lr_schedule_is_one_line():
    from ldmkit.train.config import preset_config, validate

    config = apply_overrides(preset_config("tiny"), {"vae.lr_schedule": "linear"})
    with pytest.raises(UserError, match="vae.lr_schedule must be 'constant' or 'cosine'"):
        validate(config)
