"""Trainer pieces: EMA math, LR schedule, batch order, config, signals, non-finite losses."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from ldmkit.errors import UserError
from ldmkit.models import UNET_PRESETS
from ldmkit.train import (
    TRAIN_PRESETS,
    RunConfig,
    apply_overrides,
    diffusion_stage,
    load_inference_file,
    load_training_state,
    preset_config,
    run_training,
    validate,
)
from ldmkit.train.batches import IndexStream, per_rank_batch, rank_slice
from ldmkit.train.ema import EMA
from ldmkit.train.lr import lr_at
from ldmkit.train.step_guard import NonFiniteLossError
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)


# -- EMA -----------------------------------------------------------------------------------------


def test_ema_matches_closed_form():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    ema = EMA(model, decay=0.9)
    # the parameter jumps to 1 and stays: after n updates the average is 1 - 0.9**n
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(5):
        ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((2, 3), 1 - 0.9**5), atol=1e-6)
    assert torch.equal(ema.module.bias, torch.zeros(2))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_decay_and_state_dict():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.update(model)
    assert ema.current_decay() == pytest.approx(2 / 11)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    restored = EMA(nn.Linear(2, 2), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2 and restored.warmup and restored.decay == 0.999
    assert torch.equal(restored.module.weight, ema.module.weight)
    many = EMA(model, decay=0.99, warmup=True)
    many.num_updates = 10_000
    assert many.current_decay() == 0.99


# -- learning rate --------------------------------------------------------------------------------


def test_lr_warmup_then_constant():
    lrs = [lr_at(s, base_lr=1.0, warmup=4, total_steps=10) for s in range(8)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4:] == [1.0] * 4


def test_lr_cosine_reaches_floor():
    kw = dict(base_lr=2.0, warmup=10, total_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(9, **kw) == pytest.approx(2.0)
    assert lr_at(10, **kw) == pytest.approx(2.0)
    assert lr_at(60, **kw) == pytest.approx(0.2 + 0.9 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, **kw) == pytest.approx(0.2)
    assert lr_at(500, **kw) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        lr_at(0, base_lr=1.0, warmup=0, total_steps=1, schedule="step")


# -- batch order ----------------------------------------------------------------------------------


def test_index_stream_is_a_sequence_of_permutations():
    stream = IndexStream(10, seed=1)
    first_two_epochs = stream.take(0, 20)
    assert sorted(first_two_epochs[:10].tolist()) == list(range(10))
    assert sorted(first_two_epochs[10:].tolist()) == list(range(10))
    assert not torch.equal(first_two_epochs[:10], first_two_epochs[10:])
    # any window of the stream is the same however it is reached (this is what resume needs)
    assert torch.equal(IndexStream(10, seed=1).take(7, 6), first_two_epochs[7:13])
    assert not torch.equal(IndexStream(10, seed=2).take(0, 10), first_two_epochs[:10])


def test_rank_slices_cover_the_global_batch():
    batch = torch.arange(12)
    parts = [rank_slice(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    assert per_rank_batch(12, 3) == 4
    with pytest.raises(UserError, match="divide evenly"):
        per_rank_batch(10, 3)


def test_a_batch_that_does_not_split_is_named_by_its_stage_and_flag():
    """`--batch-size 18` over 3 processes was refused as "batch size 16": the VAE stage's."""
    from ldmkit.train.distributed import DistInfo
    from ldmkit.train.run import _check_stages

    config = preset_config("tiny")
    config.vae.batch_size, config.diffusion.batch_size = 16, 18
    three = DistInfo(rank=0, local_rank=0, world_size=3, device=torch.device("cpu"))
    with pytest.raises(UserError, match=r"the VAE stage's batch size \(--set vae.batch_size=N\), 16, is the global"):
        _check_stages(config, three, trains_vae=True)
    _check_stages(config, three, trains_vae=False)  # the UNet stage's 18 splits
    config.diffusion.batch_size = 20
    with pytest.raises(UserError, match=r"the UNet stage's batch size \(--batch-size\), 20, is the global"):
        _check_stages(config, three, trains_vae=False)


# -- config ---------------------------------------------------------------------------------------


def test_config_overrides_round_trip_and_errors():
    config = preset_config("tiny")
    apply_overrides(config, {"steps": 7, "vae_steps": 3, "vae.lr": 1, "seed": 5, "min_snr_gamma": 5.0,
                             "batch_size": None})
    assert (config.diffusion.steps, config.vae.steps, config.vae.lr, config.seed) == (7, 3, 1.0, 5)
    assert config.diffusion.batch_size == preset_config("tiny").diffusion.batch_size  # None = not given
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    apply_overrides(config, {"unet_preset": "small"})
    assert config.diffusion.model["base_channels"] == UNET_PRESETS["small"]().base_channels
    with pytest.raises(UserError, match="unknown training option"):
        apply_overrides(config, {"stepz": 1})
    with pytest.raises(UserError, match="expects"):
        apply_overrides(config, {"steps": "many"})
    with pytest.raises(UserError, match="unknown training config field"):
        RunConfig.from_dict({"vae": {"nope": 1}})
    with pytest.raises(UserError, match="unknown training preset"):
        preset_config("huge")
    for bad, match in (({"precision": "fp8"}, "precision"),
                       ({"cond_drop": 1.5}, r"--cond-drop must be in \[0, 1\), got 1.5"),
                       ({"batch_size": 0}, "--batch-size must be > 0, got 0"), ({"lr": -1.0}, "--lr must be > 0"),
                       ({"image_size": 0}, "--image-size must be positive, got 0"),
                       ({"vae_lr": 0.0}, "vae.lr"), ({"vae.disc_lr": -1.0}, "vae.disc_lr"),
                       ({"weight_decay": -0.1}, "weight_decay"), ({"kl_weight": -1.0}, "vae.kl_weight"),
                       ({"vae.latent_stats_images": 0}, "latent_stats_images"),
                       ({"diffusion.sample_per_class": 0}, "sample_per_class"),
                       ({"diffusion.sample_steps": 0}, "sample_steps"),
                       ({"diffusion.num_train_timesteps": 1}, "num_steps"),
                       ({"diffusion.beta_start": 2.0}, "beta_start"),
                       ({"seed": 10**19}, r"--seed must be from -2\*\*62 to 2\*\*62"),
                       ({"num_workers": -1}, "num_workers must be >= 0, got -1")):
        with pytest.raises(UserError, match=match):
            validate(apply_overrides(preset_config("tiny"), bad))
    for name in TRAIN_PRESETS:
        validate(apply_overrides(preset_config(name), {"data": "emoji"}))
    with pytest.raises(UserError, match="--data"):
        validate(preset_config("base"))  # base names no dataset of its own


# -- stop signal and non-finite losses --------------------------------------------------------------

_TRAIN_FOREVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_train_e2e import micro_config
from ldmkit.train import run_training
config = micro_config(Path(sys.argv[1]), vae_steps=2, steps=1_000_000)
config.checkpoint_every = 1_000_000
run_training(config, sys.argv[2])
print("returned normally")
"""


def _diffusion_has_stepped(log: Path) -> bool:
    if not log.is_file():
        return False
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    return any(row["stage"] == "diffusion" and "loss" in row for row in rows)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_FOREVER, str(data), str(run), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _diffusion_has_stepped(run / "log.jsonl"):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "training never reached the diffusion stage"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopped by SIGTERM" in output and "returned normally" in output
    state = load_training_state(run / "checkpoint.pt")
    assert state["stage"] == "diffusion" and 1 <= state["step"] < 1_000_000
    assert load_inference_file(run)[2]["step"] == state["step"]


def _nan_on_calls(monkeypatch, bad_calls):
    real_loss = diffusion_stage.diffusion_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if bad_calls(calls["n"]) else value

    monkeypatch.setattr(diffusion_stage, "diffusion_loss", loss)


def test_a_non_finite_loss_skips_the_update(tmp_path, monkeypatch):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    _nan_on_calls(monkeypatch, lambda n: n == 3)
    run_training(micro_config(data, vae_steps=1, steps=6), tmp_path / "run")
    state = load_training_state(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 6 and state["skipped_steps"] == 1
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {5}  # 6 steps, one without an optimizer update
    assert all(torch.isfinite(t).all() for t in state["unet"].values())
    assert state["ema"]["num_updates"] == 5


def test_repeated_non_finite_losses_stop_training(tmp_path, monkeypatch):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    _nan_on_calls(monkeypatch, lambda n: n >= 3)
    config = micro_config(data, vae_steps=1, steps=50)
    config.checkpoint_every = 2
    with pytest.raises(NonFiniteLossError, match="5 steps in a row.*step 2.*intact"):
        run_training(config, tmp_path / "run")
    state = load_training_state(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["unet"].values())


def test_vae_stage_with_the_patch_gan(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    config = micro_config(data, vae_steps=3, steps=0)
    apply_overrides(config, {"stage": "vae", "disc_start": 1, "vae.disc_layers": 1, "vae.disc_channels": 8})
    run_training(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    gan_rows = [r for r in rows if "gan_weight" in r]
    assert [r["step"] for r in gan_rows] == [2, 3]  # the GAN starts at step disc_start
    assert all(math.isfinite(r["d"]) and math.isfinite(r["g"]) and r["gan_weight"] >= 0 for r in gan_rows)
    state = load_training_state(tmp_path / "run" / "checkpoint.pt")
    assert state["complete"] and state["disc"] is not None
    assert not (tmp_path / "run" / "model.safetensors").exists()  # --stage vae stops after the VAE
    _, vae, _ = load_inference_file(tmp_path / "run", require_unet=False)
    assert not torch.equal(vae.latent_scale, torch.ones_like(vae.latent_scale))  # stats were measured
    with pytest.raises(UserError, match="too small"):
        validate(apply_overrides(micro_config(data, vae_steps=3, steps=0), {"disc_start": 0}))

    # --stage diffusion continues a RUN whose VAE stage finished, or needs --vae
    run_training(apply_overrides(micro_config(data, vae_steps=3, steps=2), {"stage": "diffusion"}), tmp_path / "run")
    unet, vae2, meta = load_inference_file(tmp_path / "run")
    assert meta["step"] == 2 and torch.equal(vae2.latent_scale, vae.latent_scale)
    with pytest.raises(UserError, match="needs a trained VAE"):
        run_training(apply_overrides(micro_config(data, vae_steps=3, steps=2), {"stage": "diffusion"}),
                     tmp_path / "new")
    run_training(apply_overrides(micro_config(data, vae_steps=3, steps=2),
                                 {"stage": "diffusion", "vae_path": str(tmp_path / "run")}),
                 tmp_path / "new")  # another run's VAE
    assert load_inference_file(tmp_path / "new")[2]["run_config"]["vae"]["model"] == meta["vae_config"]


# -- latent cache -------------------------------------------------------------------------------


def test_latent_cache_is_reused_only_while_it_matches(tmp_path):
    from ldmkit.data import load_image_dataset
    from ldmkit.models import VAE_PRESETS, AutoencoderKL
    from ldmkit.train.distributed import DistInfo
    from ldmkit.train.latent_cache import load_or_build_latents

    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    torch.manual_seed(0)
    vae = AutoencoderKL(VAE_PRESETS["tiny"](block_channels=(8, 16), norm_groups=4, mid_attention=False)).eval()
    single = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

    class Log:
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    def build(log):
        dataset = load_image_dataset(str(data), "train", image_size=8, flip=False)
        return load_or_build_latents(tmp_path / "run", vae, dataset, None, flip=True, val_size=0, batch_size=4,
                                     dist=single, num_workers=0, log=log)

    first, log = build(Log()), Log()
    again = build(log)
    assert log.lines == [f"using cached latents {tmp_path / 'run' / 'latents.safetensors'}"]
    assert torch.equal(first[0].mean, again[0].mean) and torch.equal(first[0].std_flip, again[0].std_flip)
    dataset = load_image_dataset(str(data), "train", image_size=8, flip=False)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        assert torch.allclose(first[0].mean, vae.encode(images), atol=1e-6)
        assert torch.allclose(first[0].mean_flip, vae.encode(images.flip(-1)), atol=1e-6)
    assert torch.equal(first[0].labels, dataset.as_label_tensor())

    vae.set_latent_stats(shift=0.5, scale=2.0)  # another VAE (its stats are part of it): rebuilt
    log = Log()
    rebuilt = build(log)
    assert log.lines[0].startswith("encoding") and not torch.equal(rebuilt[0].mean, first[0].mean)
    (data / "red" / "extra.png").write_bytes((data / "red" / "000.png").read_bytes())  # the data changed
    log = Log()
    assert len(build(log)[0]) == len(dataset) + 1 and log.lines[0].startswith("encoding")


def test_setting_the_head_count_or_size_drops_the_other():
    """num_heads and head_dim are alternatives: `--set diffusion.model.num_heads=3` failed with "set
    exactly one" because the preset's head_dim stayed."""
    from ldmkit.models.unet_config import UNetConfig

    config = apply_overrides(preset_config("tiny"), {"diffusion.model.num_heads": 2})
    assert (config.diffusion.model["num_heads"], config.diffusion.model["head_dim"]) == (2, None)
    validate(config)
    config = apply_overrides(config, {"diffusion.model.head_dim": 16})
    assert (config.diffusion.model["num_heads"], config.diffusion.model["head_dim"]) == (None, 16)
    with pytest.raises(UserError, match="head_dim is 64 unless given: with num_heads, pass head_dim=None"):
        UNetConfig(num_heads=8)
    assert UNetConfig(num_heads=8, head_dim=None).heads_at(64) == (8, 8)


@pytest.mark.parametrize("key, value", [("diffusion.model.channel_mult", 3), ("diffusion.model.attention_levels", 1),
                                        ("vae.model.block_channels", 5), ("diffusion.model.channel_mult", "abc")])
def test_a_list_field_given_one_value_is_one_line(key, value):
    """`--set diffusion.model.channel_mult=3` (for =[3]) ended in "'int' object is not iterable"."""
    with pytest.raises(UserError, match=rf"--set {key} must be a list of whole numbers, e\.g\. \[1, 2\], got "):
        apply_overrides(preset_config("tiny"), {key: value})
    from ldmkit.models.autoencoder import AutoencoderKLConfig
    from ldmkit.models.unet_config import UNetConfig

    with pytest.raises(UserError, match=r"UNetConfig.channel_mult must be a list of whole numbers, got \[1.5\]"):
        UNetConfig(channel_mult=[1.5])
    assert AutoencoderKLConfig(block_channels=[8, 16.0], norm_groups=8).block_channels == (8, 16)  # 16.0 is 16


def test_reading_a_folder_leaves_the_global_random_state_alone():
    """A DataLoader took a draw from torch's global generator when it started: a run resumed in
    the VAE stage started one more, and with UNet dropout every later mask differed."""
    from ldmkit.train.image_batches import _loader

    class Items:
        def __len__(self) -> int:
            return 4

        def load_uint8(self, index: int) -> tuple[torch.Tensor, int]:
            return torch.full((3, 2, 2), index, dtype=torch.uint8), index

    state = torch.get_rng_state()
    batches = list(_loader(Items(), [[0, 1], [2, 3]], torch.device("cpu"), num_workers=0))
    assert [labels.tolist() for _, labels in batches] == [[0, 1], [2, 3]]
    assert torch.equal(torch.get_rng_state(), state)


def test_a_large_seed_orders_the_data_and_small_seeds_order_it_as_before():
    from ldmkit.train.batches import IndexStream

    big = IndexStream(10, 2**62).take(0, 25)  # seed * 1_000_003 overflowed torch's seed range
    assert sorted(big[:10].tolist()) == list(range(10))
    for seed in (0, 7, -3):  # the orders runs already have, for exact resume
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(seed * 1_000_003 + 1))
        assert torch.equal(IndexStream(10, seed).permutation(1), expected)


def test_a_skipped_vae_step_leaves_its_loss_out_of_the_logged_mean(tmp_path, monkeypatch):
    """The diffusion stage's log left a skipped step's NaN out of the interval's mean; the VAE
    stage's did not, so one skipped step made its whole log line's loss NaN."""
    from ldmkit.train import vae_stage
    from ldmkit.train.step_guard import logged_loss

    assert logged_loss([1.0, float("nan"), 3.0]) == 2.0 and math.isnan(logged_loss([float("inf")]))
    real_batches = vae_stage.training_batches

    def batches(*args, **kwargs):
        for i, (images, labels) in enumerate(real_batches(*args, **kwargs)):
            yield (images * float("nan") if i == 1 else images), labels

    monkeypatch.setattr(vae_stage, "training_batches", batches)
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    config = apply_overrides(micro_config(data, vae_steps=3, steps=0), {"stage": "vae", "log_every": 3})
    run_training(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r.get("stage") == "vae" and "loss" in r]
    assert [r["step"] for r in logged] == [3] and logged[0]["skipped"] == 1
    assert math.isfinite(logged[0]["loss"])
