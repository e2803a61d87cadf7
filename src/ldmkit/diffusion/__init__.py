"""Diffusion math on plain tensors: schedules, parameterisations, the training loss,
per-seed noise, samplers and classifier-free guidance. No nn.Module lives here: the network
is any callable `denoiser(x_t, t) -> raw prediction`.
"""

from ldmkit.diffusion.guidance import class_guidance, classifier_free_guidance, rescale_guidance
from ldmkit.diffusion.losses import diffusion_loss, min_snr_weight
from ldmkit.diffusion.noise import SeededNoise
from ldmkit.diffusion.parameterization import (
    PREDICTIONS,
    check_prediction,
    convert,
    eps_from,
    training_target,
    v_from,
    v_target,
    x0_from,
)
from ldmkit.diffusion.samplers import DEFAULT_STEPS, SAMPLERS, get_sampler, sample
from ldmkit.diffusion.schedules import NoiseSchedule, rescale_zero_terminal_snr
from ldmkit.diffusion.timesteps import SPACINGS, StepGrid, karras_sigmas, spaced_timesteps

__all__ = [
    "DEFAULT_STEPS",
    "PREDICTIONS",
    "SAMPLERS",
    "SPACINGS",
    "NoiseSchedule",
    "SeededNoise",
    "StepGrid",
    "check_prediction",
    "class_guidance",
    "classifier_free_guidance",
    "convert",
    "diffusion_loss",
    "eps_from",
    "get_sampler",
    "karras_sigmas",
    "min_snr_weight",
    "rescale_guidance",
    "rescale_zero_terminal_snr",
    "sample",
    "spaced_timesteps",
    "training_target",
    "v_from",
    "v_target",
    "x0_from",
]
