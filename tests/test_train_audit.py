"""What an audit of the training mathematics found: an eps model on a zero-terminal-SNR schedule
(trained, then unsampleable), min-SNR's zero weight where sampling starts, a validation loss over
the first classes only, and guidance through a null class --cond-drop 0 never trains."""

from __future__ import annotations

import pytest
import torch
from test_train_e2e import micro_config, one_thread, write_color_dataset  # noqa: F401 (autouse fixture)

from ldmkit.diffusion.losses import min_snr_weight
from ldmkit.errors import UserError
from ldmkit.train import run_training
from ldmkit.train import diffusion_stage as stage_module
from ldmkit.train.config import validate
from ldmkit.train.latent_cache import encode_dataset, val_subset


def test_an_eps_model_on_a_zero_terminal_snr_schedule_is_refused_before_work(tmp_path):
    config = micro_config(tmp_path / "data", vae_steps=1, steps=1)
    config.diffusion.zero_terminal_snr = True
    with pytest.raises(UserError, match="zero_terminal_snr needs a v- or x0-prediction model"):
        validate(config)  # it trained the VAE, then failed at the first preview grid, every rerun again
    config.diffusion.prediction = "v"
    validate(config)


def test_min_snr_trains_the_zero_snr_level():
    snr = torch.tensor([0.0, 1e-6, 1.0, 100.0])
    for prediction in ("v", "x0", "eps"):
        weights = min_snr_weight(snr, 5.0, prediction)
        assert weights[0] == 1.0, prediction  # v and x0 had 0: t = T - 1 never trained
    assert torch.allclose(min_snr_weight(snr, 5.0, "v")[1:], torch.tensor([1e-6 / (1 + 1e-6), 0.5, 5 / 101]))
    assert torch.allclose(min_snr_weight(snr, 5.0, "x0")[1:], torch.tensor([1e-6, 1.0, 5.0]))


def test_validation_latents_come_from_every_class(tmp_path):
    from ldmkit.data import load_image_dataset
    from ldmkit.models import VAE_PRESETS, AutoencoderKL
    from ldmkit.train.distributed import DistInfo

    assert val_subset(5, 10) == [0, 1, 2, 3, 4]
    picked = val_subset(40, 20)
    assert picked == sorted(picked) and len(set(picked)) == 20 and picked == val_subset(40, 20)
    data = write_color_dataset(tmp_path / "data", per_class=10, size=8)  # four classes, listed class by class
    dataset = load_image_dataset(str(data), "train", image_size=8, flip=False)
    vae = AutoencoderKL(VAE_PRESETS["tiny"](block_channels=(8, 16), norm_groups=4, mid_attention=False)).eval()
    single = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    pick = val_subset(len(dataset), len(dataset) // 2)
    latents = encode_dataset(vae, dataset, limit=None, flip=False, batch_size=8, dist=single, pick=pick)
    assert torch.equal(latents.labels, dataset.as_label_tensor()[pick])
    assert len(set(latents.labels.tolist())) == len(dataset.class_names)  # the first half was two classes


def test_cond_drop_0_previews_without_guidance_and_says_why(tmp_path, monkeypatch):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    config = micro_config(data, vae_steps=1, steps=2)
    config.diffusion.cond_drop = 0.0
    config.diffusion.sample_every = 2
    guidance = []
    monkeypatch.setattr(stage_module, "save_sample_grid", lambda path, *args, **kw: guidance.append(kw["guidance"]))
    with pytest.warns(UserWarning, match="--cond-drop 0: the unconditional side .* never trained"):
        run_training(config, tmp_path / "run")
    assert guidance and set(guidance) == {1.0}  # 2.0 subtracted an untrained null class's output
