"""The pipeline's reduced-precision path (bf16 networks, the CUDA default) stays within bf16
tolerance of the fp32 path; checked on the CPU, where both exist."""
from __future__ import annotations

import torch
from tiny_models import tiny_class_models

from ldmkit.diffusion import NoiseSchedule
from ldmkit.pipeline import LatentDiffusionPipeline


def _pipeline(dtype: torch.dtype) -> LatentDiffusionPipeline:
    vae, unet = tiny_class_models(3)
    return LatentDiffusionPipeline(unet, vae, NoiseSchedule.create("scaled_linear"), class_names=["a", "b", "c"],
                                   image_size=16, device="cpu", dtype=dtype)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_default_dtype_is_fp32_on_cpu():
    pipe = _pipeline(None)
    assert pipe.dtype == torch.float32 and next(pipe.unet.parameters()).dtype == torch.float32


def test_bf16_networks_stay_within_bf16_tolerance_of_fp32():
    full, half = _pipeline(torch.float32), _pipeline(torch.bfloat16)
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    seeds, labels = [0, 1, 2], [0, 1, 2]
    lat_full = full.generate_latents(seeds, labels, steps=5, cfg=2.0)
    lat_half = half.generate_latents(seeds, labels, steps=5, cfg=2.0)
    assert lat_half.dtype == torch.float32  # the sampler state stays fp32
    # bf16 keeps 8 bits of mantissa (relative rounding 2**-9 ~ 0.002 per op); 5 guided steps of a
    # small random UNet compound that to about a percent, far below the scale of a wrong result.
    assert _rel_l2(lat_half, lat_full) < 0.05
    img_full, img_half = full.decode(lat_full), half.decode(lat_full)
    assert img_half.dtype == torch.uint8 and img_half.shape == img_full.shape
    assert (img_half.float() - img_full.float()).abs().mean() < 3.0  # mean error under 3 of 255 levels
