"""`convert` / `ldm convert`: diffusers model folders -> ldmkit files that compute what diffusers
computes, and ldmkit -> diffusers -> ldmkit round trips that are exact."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file, save_file

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.interop import convert, load_bundle, load_model

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

from tiny_sd import autoencoder, save_class_model, unet_condition  # noqa: E402

TOL = 1e-4


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert theirs.std() > 1e-2  # a real signal
    assert (ours - theirs).abs().max().item() <= TOL


def _class_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=16, num_class_embeds=4,
    ).eval()


@pytest.mark.parametrize("kind", ["UNet2DConditionModel", "UNet2DModel.bin", "AutoencoderKL"])
def test_diffusers_model_folder_converts_and_agrees(kind, tmp_path) -> None:
    builders = {"UNet2DConditionModel": unet_condition, "UNet2DModel.bin": _class_unet, "AutoencoderKL": autoencoder}
    reference = builders[kind]()
    folder = tmp_path / "model"
    reference.save_pretrained(str(folder), safe_serialization=not kind.endswith(".bin"))
    assert any(folder.glob("*.bin")) == kind.endswith(".bin")
    out = tmp_path / "model.safetensors"
    convert(folder, out)
    ours = load_model(out)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900.0, 3.0])
    with torch.no_grad():
        if kind == "AutoencoderKL":
            images = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
            _close(ours.encode(images), reference.encode(images).latent_dist.mean * reference.config.scaling_factor)
            _close(ours.decode(x), reference.decode(x / reference.config.scaling_factor).sample)
        elif kind == "UNet2DModel.bin":
            labels = torch.tensor([0, 3])
            _close(ours(x, t, class_labels=labels), reference(x, t, class_labels=labels).sample)
        else:
            context = torch.randn(2, 5, 64, generator=g)
            _close(ours(x, t, context=context), reference(x, t, encoder_hidden_states=context).sample)


def test_ldmkit_to_diffusers_to_ldmkit_is_exact(tmp_path) -> None:
    source = save_class_model(tmp_path / "trained.safetensors")
    convert(source, tmp_path / "exported", to="diffusers")
    # diffusers loads each part, and it computes what the ldmkit model computes.
    original = load_bundle(source)
    unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "exported" / "unet")).eval()
    vae = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "exported" / "vae")).eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "exported" / "scheduler"))
    assert scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), original.schedule.alphas_cumprod, atol=1e-6, rtol=0)
    x, t, labels = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 700.0]), torch.tensor([2, 0])
    with torch.no_grad():
        _close(unet(x, t, class_labels=labels).sample, original.unet(x, t, class_labels=labels))
        images = torch.rand(2, 3, 16, 16) * 2 - 1
        shift, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
        theirs = (vae.encode(images).latent_dist.mean - shift.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        _close(original.vae.encode(images), theirs * vae.config.scaling_factor)
    # Back to ldmkit: every tensor and setting exactly as before.
    convert(tmp_path / "exported", tmp_path / "back.safetensors")
    back = load_bundle(tmp_path / "back.safetensors")
    for name in ("unet", "vae"):
        before, after = getattr(original, name).state_dict(), getattr(back, name).state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    # Training-only switches (how weights start, activation checkpointing) are no part of a diffusers config.
    training_only = {"zero_init_output", "gradient_checkpointing"}
    assert {k: v for k, v in back.unet.config.to_dict().items() if k not in training_only} == {
        k: v for k, v in original.unet.config.to_dict().items() if k not in training_only}
    assert back.vae.config == original.vae.config
    assert torch.equal(back.schedule.betas, original.schedule.betas)
    assert (back.class_names, back.prediction, back.image_size, back.sampler_defaults) == (
        ["red", "green", "blue"], "v", 16, {})


def test_unknown_and_missing_weights_are_named(tmp_path) -> None:
    folder = tmp_path / "unet"
    _class_unet().save_pretrained(str(folder))
    weights_file = folder / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(weights_file))
    save_file({**weights, "mid_block.bogus.weight": torch.zeros(2)}, str(weights_file))
    with pytest.raises(UserError, match=r"unexpected keys: mid_block\.bogus\.weight"):
        convert(folder, tmp_path / "out.safetensors")
    weights.pop("conv_in.bias")
    save_file(weights, str(weights_file))
    with pytest.raises(UserError, match=r"missing keys: conv_in\.bias"):
        load_model(folder)
    assert not (tmp_path / "out.safetensors").exists()  # nothing half-written


def test_cli_convert_and_its_errors(tmp_path, capsys) -> None:
    folder = tmp_path / "vae"
    autoencoder().save_pretrained(str(folder))
    assert main(["convert", str(folder), str(tmp_path / "vae.safetensors")]) == 0
    assert "wrote vae" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "vae.safetensors"), str(tmp_path / "vae_diffusers"),
                 "--to", "diffusers"]) == 0
    assert f"wrote vae from {tmp_path / 'vae.safetensors'} to" in capsys.readouterr().out  # the file read
    reloaded = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "vae_diffusers"))
    assert reloaded.config.scaling_factor == pytest.approx(0.18215)
    assert main(["convert", str(folder), str(tmp_path / "vae.pt")]) == 2  # an ldmkit file is .safetensors
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x.safetensors")]) == 2
    assert main(["convert", str(folder), str(tmp_path / "y.safetensors"), "--no-ema"]) == 2  # CompVis-only option
    errors = capsys.readouterr().err
    assert "ends in .safetensors" in errors and "no such model" in errors and "only to CompVis" in errors


def test_load_model_asks_which_component(tmp_path) -> None:
    source = save_class_model(tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="holds unet, vae: pass component="):
        load_model(source)
    assert load_model(source, "vae").config.latent_channels == 4
    with pytest.raises(UserError, match="holds no text_encoder"):
        load_model(source, "text_encoder")


def test_an_export_without_an_image_size_gives_the_vae_the_unets(tmp_path) -> None:
    """The UNet's sample_size came from the resolved size, the VAE's only from a stored one: diffusers
    then read 32 for the VAE (its tiling's tile size) beside a UNet made for 64 latent pixels."""
    import json

    from ldmkit.interop.bundle import ModelBundle
    from ldmkit.interop.diffusers_export import write_diffusers_folder

    source = load_bundle(save_class_model(tmp_path / "trained.safetensors"))
    bundle = ModelBundle(source="t", unet=source.unet, vae=source.vae, schedule=source.schedule, image_size=None)
    write_diffusers_folder(tmp_path / "out", bundle)
    unet = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    vae = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    factor = source.vae.config.downsample_factor
    assert vae["sample_size"] == unet["sample_size"] * factor == bundle.resolved_image_size()


def test_a_diffusers_dtype_is_refused_before_the_source_is_read(tmp_path, monkeypatch) -> None:
    import importlib

    convert_module = importlib.import_module("ldmkit.interop.convert")

    source = save_class_model(tmp_path / "trained.safetensors")
    monkeypatch.setattr(convert_module, "load_bundle", lambda *a, **k: pytest.fail("the source was read"))
    with pytest.raises(UserError, match="--dtype applies to ldmkit files"):
        convert(source, tmp_path / "out", to="diffusers", dtype="fp16")


def test_a_single_safetensors_variant_is_read_before_a_pickle_file(tmp_path) -> None:
    import shutil

    folder = tmp_path / "vae"
    autoencoder().save_pretrained(str(folder))
    weights = folder / "diffusion_pytorch_model.safetensors"
    shutil.move(weights, folder / "diffusion_pytorch_model.fp16.safetensors")
    torch.save({"nothing": torch.zeros(1)}, folder / "diffusion_pytorch_model.bin")  # not a VAE's weights
    assert load_bundle(folder).vae is not None  # the variant was read (the .bin would be refused)


def test_ldmkits_sampler_defaults_in_a_scheduler_config_are_checked_when_read() -> None:
    """An entry no reader knows converted fine, and the file written was then refused as damaged."""
    from ldmkit.interop.diffusers_scheduler import schedule_from_diffusers

    config = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012}
    good = {"spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
    assert schedule_from_diffusers({**config, "_ldmkit_sampler_defaults": good})[2] == good
    for bad in ({"eta": 0.0}, {"steps_offset": "1"}, {"set_alpha_to_one": 1}, {"spacing": "bogus"},
                {"steps_offset": -5}, {"karras_sigmas": "yes"}):
        with pytest.raises(UserError, match="_ldmkit_sampler_defaults has"):
            schedule_from_diffusers({**config, "_ldmkit_sampler_defaults": bad})


def test_a_learned_variance_scheduler_is_refused_and_a_fixed_one_read() -> None:
    """A network trained to predict its variance has extra output channels ldmkit's samplers do not read."""
    from ldmkit.interop.diffusers_scheduler import schedule_from_diffusers

    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}
    for learned in ("learned", "learned_range"):
        with pytest.raises(UserError, match=f"variance_type '{learned}'"):
            schedule_from_diffusers({**config, "variance_type": learned})
    for fixed in ("fixed_small", "fixed_large", None):
        assert schedule_from_diffusers({**config, "variance_type": fixed})[1] == "eps"


def test_step_settings_every_generation_would_fail_on_are_refused_when_the_config_is_read() -> None:
    """A bad spacing or offset converted fine and failed at the first `ldm generate`, blaming the steps."""
    from ldmkit.interop.diffusers_scheduler import schedule_from_diffusers

    config = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}
    with pytest.raises(UserError, match="timestep_spacing is 'bogus'; ldmkit's samplers take leading"):
        schedule_from_diffusers({**config, "timestep_spacing": "bogus"})
    for offset in (-5, 1000, "1", True):
        with pytest.raises(UserError, match="steps_offset is .* an integer from 0 to 999"):
            schedule_from_diffusers({**config, "steps_offset": offset})
    assert schedule_from_diffusers({**config, "steps_offset": 1.0, "timestep_spacing": "trailing"})[2] == {
        "steps_offset": 1, "spacing": "trailing"}


def test_karras_sigmas_of_a_scheduler_config_are_kept_both_ways() -> None:
    """Euler's / DPM-Solver's use_karras_sigmas was dropped without a word; ldmkit's three samplers take it."""
    from ldmkit.diffusion import NoiseSchedule
    from ldmkit.interop.diffusers_scheduler import schedule_from_diffusers, schedule_to_diffusers

    config = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}
    assert schedule_from_diffusers({**config, "use_karras_sigmas": True})[2] == {"karras_sigmas": True}
    assert schedule_from_diffusers({**config, "use_karras_sigmas": False})[2] == {}
    exported = schedule_to_diffusers(NoiseSchedule.create("linear", 1000), "eps", {"karras_sigmas": True})
    assert exported["use_karras_sigmas"] is True
    assert schedule_from_diffusers({k: v for k, v in exported.items() if not k.startswith("_ldmkit")})[2][
        "karras_sigmas"] is True
