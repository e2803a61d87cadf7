"""Discrete variance-preserving noise schedules.

A schedule is T betas; everything else (alpha_bar, the VE-equivalent sigma, the SNR) follows
from them. Tables are float64 on the CPU and are moved to the sample's device and dtype only
when used, so that rounding in a float16 run never changes the schedule itself.

Forward process (Ho et al. 2020, eq. 4):  x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps,
with a_t = alpha_bar_t = prod_{s<=t} (1 - beta_s).  Index t runs over 0..T-1 (t = 0 is the
first noising step, as in diffusers).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import UserError

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine", "custom")
MAX_STEPS = 100_000  # 100x any schedule in use (1000-4000): a saved config's 10**10 would be an 80 GB table

# Default beta ranges: Ho et al. 2020 (linear) and Stable Diffusion (scaled_linear).
_DEFAULT_BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}

# The alpha_bar sigma-space samplers use in place of alpha_bar = 0. A zero-terminal-SNR
# schedule has alpha_bar_{T-1} = 0, i.e. sigma = inf; 2**-24 (sigma ~ 4096) keeps the
# Karras/Euler formulation finite, as diffusers' Euler scheduler does for such schedules.
# Only a zero is replaced: the cosine schedule's alpha_bar_{T-1} = 2.4e-9 is a level the network
# was trained at, and raising it to 2**-24 while telling the network t = T - 1 made Heun's
# samples of an eps model off by 5 (25 steps) to 40 (10 steps) data standard deviations.
MIN_ALPHA_BAR = 2.0**-24


def _cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: a_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2);
    beta_t = 1 - a_t / a_{t-1}, clipped at 0.999 to avoid the singularity at t = T."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]  # table index i is the paper's t = i + 1
    return betas.clamp(max=max_beta)


def ve_sigma(alpha_bar: Tensor) -> Tensor:
    """The VE-equivalent noise level of alpha_bar: x_t / sqrt(a) = x_0 + sigma eps with
    sigma = sqrt((1 - a) / a) (Karras et al. 2022, sec. 2 and Table 1's VP column; inf where
    alpha_bar = 0, 0 where it is 1)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024, Alg. 1: shift and scale sqrt(alpha_bar) so the last step has SNR 0
    (pure noise, as at sampling time) while sqrt(alpha_bar_0) is unchanged."""
    sqrt_ab = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def _table_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the backend has it (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


class NoiseSchedule:
    """A discrete VP schedule of `num_steps` betas with its derived float64 tables.

    Build one with `NoiseSchedule.create(kind, ...)`, or pass custom `betas` directly.
    """

    def __init__(self, betas: Tensor, *, spec: dict[str, Any] | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise UserError("a noise schedule needs at least 2 betas, each in (0, 1]")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.sigmas = ve_sigma(self.alphas_cumprod)  # x_t / sqrt(a_t) = x_0 + sigma_t eps
        self._spec = spec or {"kind": "custom", "betas": betas.tolist()}
        self._device_tables: dict[tuple[str, torch.dtype], Tensor] = {}

    @classmethod
    def create(
        cls,
        kind: str = "linear",
        num_steps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        zero_terminal_snr: bool = False,
    ) -> "NoiseSchedule":
        """Build a named schedule: "linear" (Ho et al. 2020), "scaled_linear" (Stable
        Diffusion: linspace of sqrt(beta), squared) or "cosine" (Nichol & Dhariwal 2021)."""
        if kind not in ("linear", "scaled_linear", "cosine"):
            raise UserError(f"unknown noise schedule {kind!r}; choose linear, scaled_linear or cosine")
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 2 <= num_steps <= MAX_STEPS:
            raise UserError(f"num_steps must be an integer from 2 to {MAX_STEPS}, got {num_steps!r}")
        if kind == "cosine":
            if beta_start is not None or beta_end is not None:
                raise UserError("the cosine schedule takes no beta_start/beta_end")
            betas = _cosine_betas(num_steps)
        else:
            default_start, default_end = _DEFAULT_BETA_RANGE[kind]
            beta_start = default_start if beta_start is None else float(beta_start)
            beta_end = default_end if beta_end is None else float(beta_end)
            if not 0 < beta_start <= beta_end < 1:
                raise UserError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
            if kind == "linear":
                betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
            else:
                betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        spec = {
            "kind": kind,
            "num_steps": num_steps,
            "beta_start": beta_start,
            "beta_end": beta_end,
            "zero_terminal_snr": bool(zero_terminal_snr),
        }
        return cls(betas, spec=spec)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; `from_dict(to_dict())` rebuilds the same betas."""
        return dict(self._spec)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "NoiseSchedule":
        if not isinstance(spec, dict):
            raise UserError(f"a saved noise schedule must be a JSON object, got {spec!r:.80}")
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind == "custom":
            betas = spec.get("betas")
            if not isinstance(betas, list) or not all(isinstance(b, (int, float)) for b in betas):
                raise UserError("a saved custom noise schedule needs its betas as a list of numbers")
            return cls(torch.tensor(betas, dtype=torch.float64))
        if kind not in SCHEDULE_KINDS:
            raise UserError(f"unknown noise schedule kind {kind!r} in saved config")
        unknown = sorted(set(spec) - {"num_steps", "beta_start", "beta_end", "zero_terminal_snr"})
        if unknown:
            raise UserError(f"unknown field(s) of a saved noise schedule: {', '.join(map(str, unknown))}")
        return cls.create(kind, **spec)

    # -- tables --------------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        spec = {k: v for k, v in self._spec.items() if k != "betas"}
        return f"NoiseSchedule({spec})"

    def _sigma_table(self, device: torch.device) -> Tensor:
        """The sigma table on `device`, cached so repeated calls do not copy it again."""
        key = (str(device), _table_dtype(device))
        if key not in self._device_tables:
            self._device_tables[key] = self.sigmas.to(device=device, dtype=key[1])
        return self._device_tables[key]

    def sigma_at(self, t: Tensor | float) -> Tensor:
        """VE sigma at (possibly fractional) timestep t, on t's device.

        Exact at integers; in between, sigma is interpolated linearly in t (diffusers'
        Euler convention), so `inf` (zero terminal SNR) stays `inf` past the last integer.
        """
        t = torch.as_tensor(t)
        table = self._sigma_table(t.device)
        t = t.to(table.dtype).clamp(0, self.num_steps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_steps - 1)
        frac = t - lo.to(t.dtype)
        s_lo, s_hi = table[lo], table[hi]
        # Written as a where() so that frac == 0 never multiplies an infinite sigma by 0.
        return torch.where(frac > 0, s_lo + frac * (s_hi - s_lo), s_lo)

    def alpha_bar_at(self, t: Tensor | float) -> Tensor:
        """alpha_bar at timestep t: a = 1 / (1 + sigma^2) (so sigma = inf gives exactly 0)."""
        return 1.0 / (1.0 + self.sigma_at(t) ** 2)

    def snr(self, t: Tensor | float) -> Tensor:
        """Signal-to-noise ratio a_t / (1 - a_t) = 1 / sigma_t^2 (Kingma et al. 2021)."""
        return self.sigma_at(t).pow(-2)

    @property
    def alpha_bar_floor(self) -> float:
        """What sigma-space samplers use in place of alpha_bar = 0: MIN_ALPHA_BAR, or half the
        smallest positive alpha_bar where that is lower, so that the levels stay in order."""
        positive = self.alphas_cumprod[self.alphas_cumprod > 0]
        return min(MIN_ALPHA_BAR, float(positive.min()) / 2)

    def finite_alphas_cumprod(self) -> Tensor:
        """alpha_bar with a zero (zero terminal SNR) replaced by `alpha_bar_floor`; every
        other entry as it is."""
        a = self.alphas_cumprod
        return torch.where(a > 0, a, torch.full_like(a, self.alpha_bar_floor))

    def timestep_at(self, sigma: Tensor) -> Tensor:
        """Inverse of the sigma table by linear interpolation in log sigma (Karras et al. 2022
        use continuous sigma; a discrete-time network needs the matching fractional t).

        Uses `finite_alphas_cumprod` so a zero-terminal-SNR schedule still maps its largest
        usable sigma to t = T - 1. float64 CPU in and out.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        ab = self.finite_alphas_cumprod()
        log_table = ve_sigma(ab).log()  # increasing in t
        log_sigma = sigma.clamp(min=1e-10).log()
        hi = torch.searchsorted(log_table, log_sigma).clamp(1, self.num_steps - 1)
        lo = hi - 1
        w = ((log_sigma - log_table[lo]) / (log_table[hi] - log_table[lo])).clamp(0, 1)
        return lo.double() + w

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(a_t), sqrt(1 - a_t)) shaped [B, 1, ...] to broadcast against `like`."""
        a = self.alpha_bar_at(t.to(like.device))
        shape = (-1,) + (1,) * (like.dim() - 1)
        alpha = a.sqrt().to(like.dtype).reshape(shape)
        sigma = (1 - a).sqrt().to(like.dtype).reshape(shape)
        return alpha, sigma

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample q(x_t | x_0) (Ho et al. 2020, eq. 4): sqrt(a_t) x_0 + sqrt(1 - a_t) noise.

        `t` is a [B] tensor of timesteps (integer or fractional), or a scalar for all rows.
        """
        t = torch.as_tensor(t, device=x0.device)
        if t.dim() == 0:
            t = t.expand(x0.shape[0])
        alpha, sigma = self.coefficients(t, x0)
        return alpha * x0 + sigma * noise
