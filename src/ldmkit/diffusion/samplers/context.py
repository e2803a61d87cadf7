"""What every sampler shares: start state, img2img truncation, inpaint blending, the network
call with its conversion to (x_0, eps), per-step noise and the callback.

Samplers keep their state x in the variance-preserving frame x = alpha x_0 + sigma eps at the
current grid level (sigma-space samplers convert in and out inside a step), so the
callback, the mask blending and img2img see the same kind of tensor whatever the sampler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmkit.diffusion.noise import SeededNoise
from ldmkit.diffusion.parameterization import check_prediction, eps_from, x0_from
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.diffusion.timesteps import StepGrid
from ldmkit.errors import UserError

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, float, Tensor], None]


def img2img_steps(num_steps: int, strength: float) -> int:
    """How many of `num_steps` an img2img run takes: int(num_steps * strength), as diffusers'
    img2img pipelines do (strength 1 = every step, from (almost) pure noise)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise UserError(f"strength must be a number in [0, 1], got {strength!r}")
    return min(int(num_steps * strength), num_steps)


class SamplingContext:
    """One sampling run over `grid`, after img2img truncation.

    Args:
        denoiser: `denoiser(x_t, t) -> raw prediction`, t a float32 [B] tensor.
        x_T: standard-normal start noise [B, ...]; drawn from `noise` when None.
        grid: the sampler's full grid; `self.grid` is what remains after `strength`.
        prediction: "eps", "v" or "x0".
        noise: per-seed stream for stochastic steps (falls back to torch.randn_like).
        callback: `callback(step_index, t, x)` after each step, x in the VP frame.
        init: clean latents for img2img / inpainting; noised to the first level with x_T.
        strength: fraction of the grid to run when `init` is given.
        mask: 1 = regenerate, 0 = keep `init` (broadcast against x; needs `init`).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        x_T: Tensor | None,
        schedule: NoiseSchedule,
        grid: StepGrid,
        *,
        prediction: str,
        noise: SeededNoise | None,
        callback: Callback | None,
        init: Tensor | None,
        strength: float,
        mask: Tensor | None,
    ) -> None:
        check_prediction(prediction)
        if x_T is None:
            if noise is None:
                raise UserError("give the start noise x_T or a SeededNoise to draw it from")
            x_T = noise.draw()
        if noise is not None and tuple(x_T.shape) != noise.batch_shape:
            raise UserError(f"x_T has shape {tuple(x_T.shape)} but the noise stream draws {noise.batch_shape}")
        self.denoiser, self.schedule, self.prediction = denoiser, schedule, prediction
        self.noise, self.callback = noise, callback
        self.x_T = x_T
        self.init = self._check_like(init, "init") if init is not None else None
        self.mask = None
        if mask is not None:
            if init is None:
                raise UserError("a mask needs init latents (the image to keep outside the mask)")
            self.mask = mask.to(device=x_T.device, dtype=x_T.dtype)
            try:  # and no wider: a [1, B, C, h, w] mask turned the samples into that shape
                fits = torch.broadcast_shapes(self.mask.shape, x_T.shape) == x_T.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise UserError(f"mask shape {tuple(mask.shape)} does not broadcast to {tuple(x_T.shape)}")
        self.grid = grid
        if init is None and strength != 1.0:
            raise UserError("strength needs init latents (it sets how far to noise them)")
        if init is not None:
            self.grid = grid.tail(img2img_steps(len(grid), strength))
        self.full_grid = len(self.grid) == len(grid)
        # The schedule's own level, not the grid's: sigma-space samplers move alpha_bar = 0 to a
        # finite level, but the network is still told t = T - 1, where it learned zero SNR.
        if len(self.grid) and prediction == "eps" and float(schedule.alpha_bar_at(self.grid.timesteps[0])) == 0:
            raise UserError(
                "the first sampling step is at zero SNR (alpha_bar = 0), where an eps prediction "
                "cannot give x_0; use a v- or x0-prediction model (what a zero-terminal-SNR schedule is "
                "for), or 'leading' spacing without Karras sigmas (it starts below t = T - 1)"
            )
        # Everything the loop needs, as Python floats and one device tensor, computed now.
        self.alphas = self.grid.alphas.tolist()
        self.sigmas_vp = self.grid.sigmas_vp.tolist()
        self.timesteps = self.grid.timesteps.tolist()
        batch = x_T.shape[0]
        t_dev = self.grid.timesteps.to(device=x_T.device, dtype=torch.float32)
        self._t_batch = t_dev[:, None].expand(-1, batch)  # [n, B], one copy to the device

    def _check_like(self, tensor: Tensor, name: str) -> Tensor:
        if tuple(tensor.shape) != tuple(self.x_T.shape):
            raise UserError(f"{name} has shape {tuple(tensor.shape)}, the noise {tuple(self.x_T.shape)}")
        return tensor.to(device=self.x_T.device, dtype=self.x_T.dtype)

    def __len__(self) -> int:
        return len(self.grid)

    def start(self) -> Tensor:
        """State at level 0: the noise itself, or `init` noised there with the same noise
        (Ho et al. 2020, eq. 4), so an img2img result depends only on the seed. Inpainting at
        strength 1 starts its masked part from the noise alone, as plain generation does (and
        diffusers' inpainting pipelines): `init` noised to the top level would leak into it
        (sqrt(alpha_bar) = 0.07 of it on SD's schedule). No step to run (strength 0): `init`."""
        if self.init is None:
            return self.x_T
        if len(self.grid) == 0:
            return self.init
        x = self.alphas[0] * self.init + self.sigmas_vp[0] * self.x_T
        if self.mask is not None and self.full_grid:
            x = self.mask * self.x_T + (1 - self.mask) * x
        return x

    def predict(self, x: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Call the network at grid level `level` (< n); return its (x_0, eps) estimates.
        x: [B, C, h, w] -> (x0, eps): [B, C, h, w] each."""
        pred = self.denoiser(x, self._t_batch[level])
        if pred.shape != x.shape:  # a UNet with other out_channels would broadcast into a wrong sample
            raise UserError(f"the denoiser returned shape {tuple(pred.shape)} for an input of {tuple(x.shape)}; "
                            "it must return its input's shape (check the UNet's out_channels)")
        pred = pred.to(x.dtype)
        alpha, sigma = self.alphas[level], self.sigmas_vp[level]
        x0 = x0_from(pred, x, alpha, sigma, self.prediction)
        return x0, eps_from(pred, x, alpha, sigma, self.prediction)

    def randn(self, x: Tensor) -> Tensor:
        """Fresh standard-normal noise for a stochastic step, per seed when a stream is set."""
        return self.noise.draw_like(x) if self.noise is not None else torch.randn_like(x)

    def blend(self, x: Tensor, level: int) -> Tensor:
        """Inpainting: outside the mask, `init` noised to grid level `level` with the run's own
        start noise; x unchanged without a mask. At the last level the clean init, even where that
        level is not fully clean (DDIM with set_alpha_to_one=False ends at alpha_bar of t=0, as
        SD configures it)."""
        if self.mask is None:
            return x
        if level == len(self.grid):
            known = self.init
        else:
            known = self.alphas[level] * self.init
            if self.sigmas_vp[level] > 0:
                known = known + self.sigmas_vp[level] * self.x_T
        return self.mask * x + (1 - self.mask) * known

    def end_step(self, i: int, x: Tensor) -> Tensor:
        """After step i (now at level i + 1): re-impose the known region, then report.

        Inpainting by latent blending (Lugmayr et al. 2022, RePaint; the SD inpaint
        pipelines): outside the mask, replace x by `init` noised to the current level with
        the run's own start noise, so the kept region follows the forward process exactly.
        """
        x = self.blend(x, i + 1)
        if self.callback is not None:
            self.callback(i, self.timesteps[i], x)
        return x
