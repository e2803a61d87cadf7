"""The peer side of the benchmark: diffusers 0.42.1 models and its documented sampling loop.

Configs follow /work/shared/BENCHMARKS.md; the `tiny` variants (for `--smoke` on a CPU) keep
every block type of the full ones so every code path runs. The peer gets diffusers' best
documented settings; those applied here (channels_last, SDPA through the default
AttnProcessor2_0, bf16) and in bench_gpu.py (torch.compile, fused AdamW).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

# C1: class-conditional UNet, latents 4x32x32, ~90M params. 1001 class rows = 1000 classes +
# the null label that classifier-free guidance needs in E1 (the Q1 recipe in BENCHMARKS.md
# does the same with num_class_embeds=11); one extra 2048-wide row, 0.002% of the params.
C1_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, block_out_channels=(128, 256, 384, 512),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=64, num_class_embeds=1001,
)
C1_UNET_TINY = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=16, num_class_embeds=11, norm_num_groups=8,
)

# C2: Stable Diffusion 1.x UNet = UNet2DConditionModel() defaults with SD's 768-wide text
# context (the bare default cross_attention_dim is 1280); 859.5M params.
C2_UNET = dict(sample_size=64, cross_attention_dim=768)
C2_UNET_TINY = dict(
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=24,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4, norm_num_groups=8,
)
C2_CONTEXT_LEN = 77

# C3: Stable Diffusion's KL-f8 autoencoder, 83.7M params.
C3_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
C3_VAE_TINY = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16,
    block_out_channels=(8, 16), norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)

# Noise schedules of the two generation benchmarks (DDPM/ADM linear for the class model,
# Stable Diffusion's scaled-linear for the text model), shared by both sides.
E1_SCHEDULE = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
E2_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def build_unet(config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """UNet2DConditionModel when the config has a text context, else UNet2DModel."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    cls = UNet2DConditionModel if "cross_attention_dim" in config else UNet2DModel
    with torch.device(device):  # initialise on the GPU: seconds, not a minute, for 860M params
        model = cls(**config)
    return model.eval()


def build_vae(config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device(device):
        model = AutoencoderKL(**config)
    return model.eval()


def is_text_unet(model: torch.nn.Module) -> bool:
    return getattr(model.config, "cross_attention_dim", None) is not None


def unet_call(model: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One UNet forward on a batch dict {x, t, [labels], [context]} -> prediction."""
    if "context" in batch:
        return model(batch["x"], batch["t"], encoder_hidden_states=batch["context"]).sample
    return model(batch["x"], batch["t"], class_labels=batch.get("labels")).sample


def vae_encode(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Posterior mean, unscaled (diffusers' convention)."""
    return vae.encode(images).latent_dist.mean


def vae_decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images."""
    return vae.decode(z).sample


def make_scheduler(schedule: dict[str, Any]):
    """DPM-Solver++(2M), diffusers' defaults otherwise (the documented pipeline's)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++",
                                       solver_order=2, prediction_type="epsilon", **schedule)


class PeerGenerator:
    """diffusers' sampling loop as its pipelines write it (StableDiffusionPipeline, DiTPipeline):
    `scheduler.set_timesteps`, then per step: cat([x, x]) -> UNet(cond + uncond batch) -> CFG
    -> `scheduler.step`; finally `vae.decode(latents / scaling_factor)`.

    `unet` and `decode` may be compiled callables; `dtype` is the latents' dtype (the
    pipelines make latents in the weights' dtype).
    """

    def __init__(self, unet: Callable, decode: Callable, scheduler, *, scaling_factor: float,
                 guidance_scale: float, steps: int, dtype: torch.dtype,
                 mark_step: bool = False):
        self.unet, self.decode_fn, self.scheduler = unet, decode, scheduler
        self.scaling_factor, self.guidance_scale, self.steps = scaling_factor, guidance_scale, steps
        self.dtype = dtype
        self.mark_step = mark_step  # CUDA graphs: tell cudagraph trees a new iteration begins

    def latents(self, noise: torch.Tensor, cond: dict[str, torch.Tensor],
                uncond: dict[str, torch.Tensor]) -> torch.Tensor:
        sched = self.scheduler
        sched.set_timesteps(self.steps, device=noise.device)
        x = (noise * sched.init_noise_sigma).to(self.dtype)
        extra = {k: torch.cat([cond[k], uncond[k]]) for k in cond}  # labels or context
        for t in sched.timesteps:
            batch = {"x": torch.cat([x, x]), "t": t, **extra}
            if self.mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            out = unet_call(self.unet, batch)
            eps_c, eps_u = out.chunk(2)
            eps = eps_u + self.guidance_scale * (eps_c - eps_u)
            x = sched.step(eps, t, x).prev_sample
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        return self.decode_fn(x / self.scaling_factor)

    def __call__(self, noise, cond, uncond) -> torch.Tensor:
        return self.decode(self.latents(noise, cond, uncond))
