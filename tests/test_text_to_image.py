"""Text-to-image from a diffusers Stable Diffusion folder agrees with diffusers' own pipelines.

A tiny random SD pipeline (CLIP text encoder, UNet2DConditionModel, AutoencoderKL, SD's DDIM
scheduler config) is saved with diffusers' `save_pretrained`; ldmkit loads the folder directly
and, from the same start noise, 10 guided DDIM steps give the latents diffusers'
`StableDiffusionPipeline` gives (and img2img those of `StableDiffusionImg2ImgPipeline`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ldmkit.diffusion import SeededNoise
from ldmkit.errors import UserError

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

from tiny_sd import load_reference_pipeline, save_sd_pipeline  # noqa: E402

TOL = 1e-4
PROMPT, NEGATIVE, SEED = "a cat", "at", 3


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def reference(sd_folder: Path):
    return load_reference_pipeline(sd_folder)


@pytest.fixture(scope="module")
def pipe(sd_folder: Path):
    from ldmkit.pipeline import LatentDiffusionPipeline

    return LatentDiffusionPipeline.from_pretrained(sd_folder, device="cpu")


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert theirs.std() > 1e-2  # a real signal
    assert (ours - theirs).abs().max().item() <= TOL


def _ours(pipe, **kwargs) -> torch.Tensor:
    return pipe.generate_latents([SEED], [-1], sampler="ddim", steps=10, cfg=5.0, prompt=PROMPT,
                                 negative_prompt=NEGATIVE, **kwargs)


def test_folder_loads_with_sd_settings(pipe) -> None:
    assert pipe.takes_text and pipe.text_encoder is not None
    assert pipe.sampler_defaults == {"spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
    assert pipe.image_size == 16 and pipe.prediction == "eps"
    assert pipe.vae.latent_scale.tolist() == pytest.approx([0.18215] * 4)
    context = pipe.text_encoder.encode([PROMPT])
    assert context.shape == (1, 77, 64)


def test_guided_ddim_matches_stable_diffusion_pipeline(pipe, reference) -> None:
    x_T = SeededNoise([SEED], pipe.latent_shape).draw()
    with torch.no_grad():
        expected = reference(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=5.0,
                             latents=x_T.clone(), output_type="latent").images
        latents = _ours(pipe)
        _close(latents, expected)
        # Decoding: ldmkit divides by its stored latent scale as diffusers divides by scaling_factor.
        _close(pipe.vae.decode(latents), reference.vae.decode(expected / reference.vae.config.scaling_factor).sample)


def test_img2img_matches_stable_diffusion_img2img_pipeline(pipe, reference) -> None:
    image = Image.fromarray((torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy())
    init = pipe.encode_image(image)  # normalised latents [1, 4, 8, 8]
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**reference.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        # 4-channel input is taken as latents; the generator draws the same noise as seed SEED's stream.
        expected = img2img(PROMPT, image=init, strength=0.6, negative_prompt=NEGATIVE, num_inference_steps=10,
                           guidance_scale=5.0, generator=torch.Generator().manual_seed(SEED),
                           output_type="latent").images
        _close(_ours(pipe, init=init, strength=0.6), expected)


def test_converted_file_and_diffusers_export_reproduce_the_folder(pipe, reference, sd_folder, tmp_path) -> None:
    from ldmkit.interop import convert
    from ldmkit.pipeline import LatentDiffusionPipeline

    expected = _ours(pipe)
    convert(sd_folder, tmp_path / "sd.safetensors")
    from_file = LatentDiffusionPipeline.from_pretrained(tmp_path / "sd.safetensors", device="cpu")
    assert from_file.sampler_defaults == pipe.sampler_defaults
    assert torch.equal(_ours(from_file), expected)
    convert(tmp_path / "sd.safetensors", tmp_path / "back", to="diffusers")
    exported = load_reference_pipeline(tmp_path / "back")
    x_T = SeededNoise([SEED], pipe.latent_shape).draw()
    with torch.no_grad():
        theirs = exported(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, guidance_scale=5.0,
                          latents=x_T, output_type="latent").images
    _close(theirs, expected)


def test_prompts_are_checked(pipe, tmp_path) -> None:
    with pytest.raises(UserError, match="give a prompt"):
        pipe.generate_latents([0], [-1], steps=2)
    with pytest.raises(UserError, match="the prompt must be one string, got list"):
        pipe.generate(1, prompt=["a cat", "a dog"], steps=2)
    with pytest.raises(UserError, match=r"this model has no classes \(a text-to-image model: give a prompt\)"):
        pipe.generate(1, classes=["cats"], prompt=PROMPT, steps=2)
    folder = save_sd_pipeline(tmp_path / "no_text", text_encoder=False)
    from ldmkit.pipeline import LatentDiffusionPipeline

    without = LatentDiffusionPipeline.from_pretrained(folder, device="cpu")
    with pytest.raises(UserError, match=r"CLIP text encoder.*text_encoder/.*tokenizer/"):
        without.generate(prompt=PROMPT, steps=2)


def test_cli_generate_with_prompt_writes_pngs(sd_folder, tmp_path) -> None:
    from ldmkit.cli import main

    out = tmp_path / "samples"
    code = main(["generate", "--model", str(sd_folder), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                 "--steps", "2", "--n", "2", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000_seed0.png", "00001_seed1.png", "grid.png"]
    assert Image.open(out / "00000_seed0.png").size == (16, 16)


def test_one_context_tensor_per_batch(sd_folder, monkeypatch) -> None:
    """The prompt features are cast to the UNet's dtype once per batch, so every step passes the
    same tensor: a CompiledUNet then computes the cross-attentions' keys and values once
    (nn/context_kv.py); a per-step cast would make a new tensor, and a recomputation, each step.
    bf16 networks (the CUDA default), where the cast is not a no-op."""
    from ldmkit.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(sd_folder, device="cpu", dtype=torch.bfloat16)
    seen = []
    unet_type = type(pipe.unet)
    original = unet_type.forward

    def spy(self, x, t, **kwargs):
        seen.append(kwargs["context"])
        return original(self, x, t, **kwargs)

    monkeypatch.setattr(unet_type, "forward", spy)
    pipe.generate_latents([SEED], [-1], sampler="ddim", steps=3, cfg=5.0, prompt=PROMPT)
    assert len(seen) == 3 and all(c is seen[0] for c in seen)


def test_a_tokenizer_folder_without_its_config_encodes_to_the_encoders_length(sd_folder, tmp_path) -> None:
    """vocab.json + merges.txt alone (the docs allow it): transformers then says model_max_length
    ~1e30, which padding to failed with OverflowError; the encoder's 77 positions bound it."""
    import shutil

    from ldmkit.pipeline import LatentDiffusionPipeline

    from tiny_sd import write_tokenizer

    folder = Path(shutil.copytree(sd_folder, tmp_path / "sd"))
    shutil.rmtree(folder / "tokenizer")
    (write_tokenizer(folder / "tokenizer") / "tokenizer_config.json").unlink()  # vocab.json, merges.txt
    pipe = LatentDiffusionPipeline.from_pretrained(folder, device="cpu")
    assert pipe.text_encoder.tokenize(["a cat " * 60]).shape == (1, 77)
    assert pipe.generate(1, prompt=PROMPT, steps=1)[0].size == (16, 16)


def test_a_folder_without_a_scheduler_gets_the_schedule_its_note_names(sd_folder, tmp_path, capsys) -> None:
    """The note said "using Stable Diffusion's schedule", but the converted file kept none, and
    `ldm generate` refused it ("stores no noise schedule")."""
    import shutil

    from ldmkit.cli import main
    from ldmkit.interop import load_bundle
    from ldmkit.interop.bundle import sd_default_schedule

    folder = Path(shutil.copytree(sd_folder, tmp_path / "sd"))
    shutil.rmtree(folder / "scheduler")
    assert main(["convert", str(folder), str(tmp_path / "ns.safetensors")]) == 0
    assert "using Stable Diffusion's schedule" in capsys.readouterr().out
    schedule = load_bundle(tmp_path / "ns.safetensors").schedule
    assert schedule is not None and torch.allclose(schedule.alphas_cumprod, sd_default_schedule().alphas_cumprod)
    assert main(["generate", "--model", str(tmp_path / "ns.safetensors"), "--prompt", PROMPT, "--n", "1", "--steps",
                 "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")]) == 0


def test_a_prompt_past_the_encoders_length_is_said(pipe) -> None:
    """Two prompts that differ only after the 77th token gave the same images without a word."""
    with pytest.warns(UserWarning, match=r"a prompt is longer than the 77 tokens the text encoder reads: only"):
        pipe.text_encoder.tokenize(["a cat " * 60])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.text_encoder.tokenize([PROMPT])  # a short prompt: no word


def test_a_text_encoder_downloaded_only_as_its_fp16_variant_loads(sd_folder, tmp_path) -> None:
    """unet/ and vae/ took a lone .fp16.safetensors; text_encoder/ refused the same download."""
    import shutil

    from ldmkit.pipeline import LatentDiffusionPipeline

    folder = Path(shutil.copytree(sd_folder, tmp_path / "sd"))
    for part, weights in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                          ("text_encoder", "model")):
        (folder / part / f"{weights}.safetensors").rename(folder / part / f"{weights}.fp16.safetensors")
    pipe = LatentDiffusionPipeline.from_pretrained(folder, device="cpu")
    assert pipe.text_encoder is not None and pipe.generate(1, prompt=PROMPT, steps=1)[0].size == (16, 16)
