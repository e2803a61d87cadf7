"""Pixel-level reconstruction quality of the VAE: PSNR and SSIM (for `ldm eval --vae`).

Both compare image pairs, so they judge the autoencoder alone; the distribution metrics
of `report.py` judge what the diffusion model generates.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ldmkit.errors import UserError

__all__ = ["psnr", "ssim", "reconstruction_metrics"]

_MAX_PSNR_DB = 100.0  # identical images have infinite PSNR; cap so reports stay finite JSON


def _to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1]: uint8 is divided by 255; float is ldmkit's [-1, 1], clamped."""
    if x.dtype == torch.uint8:
        return x.to(torch.float64) / 255.0
    if not torch.is_floating_point(x):
        raise UserError(f"images must be uint8 or float, got {x.dtype}")
    # Clamped as a PNG writer would: the VAE decoder's output is not bounded.
    return (x.to(torch.float64).clamp(-1, 1) + 1) / 2


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise UserError(f"originals and reconstructions differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise UserError(f"images must be [N, C, H, W], got shape {tuple(a.shape)}")


def psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE) with pixels in [0, 1] (peak signal 1).

    Per-image PSNR averaged over the set, capped at 100 dB per image.
    """
    _check_pair(originals, reconstructions)
    a, b = _to_unit_range(originals), _to_unit_range(reconstructions)
    mse = (a - b).square().flatten(1).mean(dim=1)
    floor = 10 ** (-_MAX_PSNR_DB / 10)
    return float((-10 * torch.log10(mse.clamp(min=floor))).mean())


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    *,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang et al. 2004, IEEE TIP 13(4), eq. 13 and sec. III-C).

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))
    with local statistics under an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2,
    C2 = (0.03 L)^2 and L = 1 (pixels in [0, 1]). As in the paper's reference code, the
    window is applied only where it fits inside the image ("valid"), each channel is
    treated as a grayscale image, and the map is averaged over positions, channels and
    images. Images smaller than the window use a window as large as the image.
    """
    _check_pair(originals, reconstructions)
    x, y = _to_unit_range(originals), _to_unit_range(reconstructions)
    n, c, h, w = x.shape
    size = min(window_size, h, w)
    g = _gaussian_window(size, sigma)
    window = (g[:, None] * g[None, :]).expand(c, 1, size, size)  # one 2-D window per channel

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=c)  # "valid": [N, C, h-size+1, w-size+1]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.square()
    var_y = local_mean(y * y) - mu_y.square()
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = k1**2, k2**2  # (K L)^2 with L = 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


def reconstruction_metrics(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float]:
    """{"psnr": dB, "ssim": in [-1, 1]} of reconstructions against their originals.

    Images are `[N, C, H, W]`, both uint8 in [0, 255] or both float in [-1, 1] (ldmkit's
    convention; float values are clamped to that range first).
    """
    if originals.dtype != reconstructions.dtype and torch.uint8 in (originals.dtype, reconstructions.dtype):
        raise UserError("originals and reconstructions must both be uint8 or both be float")
    value = psnr(originals, reconstructions)
    # psnr() caps each image at _MAX_PSNR_DB, so only a NaN reconstruction (a diverged VAE) is not
    # finite here: it stays NaN (it read as the perfect 100 dB)
    return {"psnr": value, "ssim": ssim(originals, reconstructions)}
