"""Tiny random Stable-Diffusion-shaped models for the interop tests, built offline.

A CLIP tokenizer with a 516-token vocabulary (the 256 byte symbols, each also as a word end,
two merges and the start/end tokens), a 2-layer CLIP text encoder, a 3-level
UNet2DConditionModel and a 2-level AutoencoderKL (f2), saved with diffusers' own
`save_pretrained` so the folders are what a real download looks like.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

CONTEXT_DIM = 64  # one 64-wide head, OpenAI CLIP's head size (what a CompVis reader assumes)
NORM_GROUPS = 8  # of both models (CompVis weights do not store it)
LATENT_SIDE = 8  # the UNet's sample_size; images are 16x16 (the VAE halves once)


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-level BPE symbols: printable bytes as themselves, the rest shifted."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(c) for c in codes + [256 + i for i in range(len(shifted))]]


def write_tokenizer(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["at</w>", "cat</w>"])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\na t</w>\nc at</w>\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    return folder


def clip_text_model() -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    config = CLIPTextConfig(vocab_size=516, hidden_size=CONTEXT_DIM, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=1, max_position_embeddings=77, bos_token_id=514, eos_token_id=515,
                            pad_token_id=515)
    return CLIPTextModel(config).eval()


def unet_condition(**overrides: Any) -> torch.nn.Module:
    import diffusers

    torch.manual_seed(0)
    # SD 1.x's shape in small: two ResNets per level, cross-attention on all levels but the last.
    kwargs = dict(sample_size=LATENT_SIDE, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64),
                  layers_per_block=2, norm_num_groups=NORM_GROUPS,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=CONTEXT_DIM, attention_head_dim=4)
    return diffusers.UNet2DConditionModel(**{**kwargs, **overrides}).eval()


def autoencoder() -> torch.nn.Module:
    import diffusers

    torch.manual_seed(2)
    return diffusers.AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=2, latent_channels=4, norm_num_groups=NORM_GROUPS,
        sample_size=2 * LATENT_SIDE,
    ).eval()


SD_DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
               set_alpha_to_one=False, steps_offset=1)


def save_sd_pipeline(folder: Path, *, text_encoder: bool = True) -> Path:
    """A StableDiffusionPipeline folder (DDIM scheduler as SD configures it)."""
    import diffusers
    from transformers import CLIPTokenizer

    tokenizer_dir = write_tokenizer(folder.parent / f"{folder.name}_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    pipe = diffusers.StableDiffusionPipeline(
        vae=autoencoder(), text_encoder=clip_text_model(), tokenizer=tokenizer, unet=unet_condition(),
        scheduler=diffusers.DDIMScheduler(**SD_DDIM), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    if not text_encoder:
        import shutil

        shutil.rmtree(folder / "text_encoder")
        shutil.rmtree(folder / "tokenizer")
        index = json.loads((folder / "model_index.json").read_text())
        index.pop("text_encoder"), index.pop("tokenizer")
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def load_reference_pipeline(folder: Path):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_class_model(path: Path, *, class_names: tuple[str, ...] = ("red", "green", "blue")) -> Path:
    """A tiny class-conditional ldmkit model (UNet + f2 VAE, 16 px images) as `ldm train` writes it."""
    from ldmkit.diffusion import NoiseSchedule
    from ldmkit.models import AutoencoderKL, AutoencoderKLConfig, UNet, UNetConfig
    from ldmkit.train.inference_file import save_inference_file

    torch.manual_seed(3)
    unet = UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                           head_dim=16, norm_groups=8, num_classes=len(class_names)))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)  # as if trained: not the zero init
    vae = AutoencoderKL(AutoencoderKLConfig(block_channels=(8, 16), num_res_blocks=1, latent_channels=4, norm_groups=4))
    vae.set_latent_stats([0.1, -0.2, 0.0, 0.3], [1.5, 0.7, 1.1, 0.9])
    save_inference_file(
        path, unet=unet, vae=vae, run_config={"image_size": 16, "diffusion": {"prediction": "v"}},
        extra={"schedule": NoiseSchedule.create("cosine", 1000).to_dict(), "class_names": list(class_names)},
    )
    return path
