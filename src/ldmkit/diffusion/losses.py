"""The denoising training objective with optional Min-SNR-gamma weighting.

loss = E_{t ~ U{0..T-1}, eps ~ N(0, I)} [ w(t) mean((f(x_t, t) - target)^2) ]  (the squared norm
over the d = C*H*W elements, divided by d),
x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (Ho et al. 2020, eq. 4 and eq. 14 for eps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmkit.diffusion.parameterization import check_prediction, training_target
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import UserError


def min_snr_weight(snr: Tensor, gamma: float, prediction: str) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 9 and Sec. 3.4).

    The x0-space weight min(SNR, gamma) expressed for each target, using
    ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2:
      x0: min(SNR, gamma);  eps: min(SNR, gamma) / SNR;  v: min(SNR, gamma) / (SNR + 1).

    At SNR = 0 (zero terminal SNR) the x0-space weight min(0, gamma) is 0, so t = T - 1, where
    sampling starts, would never be trained: there every target gets weight 1, its plain loss (as
    diffusers' training scripts set it).
    """
    check_prediction(prediction)
    clipped = snr.clamp(max=gamma)
    if prediction in ("x0", "v"):
        weight = clipped if prediction == "x0" else clipped / (snr + 1)
        return torch.where(snr > 0, weight, torch.ones_like(snr))
    # eps: the ratio tends to 1 as SNR -> 0 (zero terminal SNR), where 0/0 would be NaN.
    return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))


def _check_inputs(x0: Tensor, t: Tensor | None, noise: Tensor | None) -> None:
    """`UserError` for a mistaken x0, t or noise, from their metadata only (no value is read: this
    runs every training step, under torch.compile too). A [1, ...] noise or a [3] t for a batch of
    4 broadcast into a plausible loss or failed inside torch; an integer x0 failed in randn."""
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        got = f"{x0.dtype} {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
        raise UserError(f"x0 must be a floating-point tensor [B, ...], got {got}")
    batch = x0.shape[0]
    if t is not None and (not isinstance(t, Tensor) or t.shape != (batch,) or t.dtype == torch.bool
                          or t.is_complex()):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise UserError(f"t must be a tensor of timesteps of shape [{batch}] (x0's batch), got {got}")
    if noise is not None and (not isinstance(noise, Tensor) or noise.shape != x0.shape):
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise UserError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}, got {got}")


def diffusion_loss(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: str = "eps",
    min_snr_gamma: float | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_per_sample: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mean denoising loss of `model_fn(x_t, t) -> raw prediction` on the clean batch `x0`.

    x0: floating-point [B, ...]. t: timesteps [B], integer (a float tensor is taken as fractional
    timesteps, interpolated as the samplers' are); uniform on [0, T) when None. Values outside
    [0, T - 1] are clamped to it, not refused: checking them would wait on the device every step.
    noise: the eps, x0's shape; standard normal when None. Both are drawn with `generator` (on its
    device, then moved to x0's). The network is given t as float32, as the samplers give it. The
    squared error is taken in float32 even under autocast. With `return_per_sample`, also returns
    the [B] losses.
    """
    check_prediction(prediction)
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise UserError(f"min_snr_gamma must be positive, got {min_snr_gamma!r}")
    _check_inputs(x0, t, noise)
    batch = x0.shape[0]
    draw_device = generator.device if generator is not None else x0.device
    if t is None:
        t = torch.randint(0, schedule.num_steps, (batch,), generator=generator, device=draw_device)
    t = t.to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=draw_device, dtype=x0.dtype)
    noise = noise.to(device=x0.device, dtype=x0.dtype)

    alpha, sigma = schedule.coefficients(t, x0)
    x_t = alpha * x0 + sigma * noise
    pred = model_fn(x_t, t.to(torch.float32))
    if pred.shape != x0.shape:  # broadcasting a [B, 1, ...] or [1, ...] output gave a loss, and trained
        raise UserError(f"the model returned shape {tuple(pred.shape)} for a batch of {tuple(x0.shape)}; it must "
                        "return its input's shape (check the UNet's out_channels)")
    target = training_target(prediction, x0, noise, alpha, sigma)
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if min_snr_gamma is not None:
        snr = schedule.snr(t).to(torch.float32)
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, prediction)
    loss = per_sample.mean()
    return (loss, per_sample) if return_per_sample else loss
