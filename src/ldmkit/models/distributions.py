"""The diagonal Gaussian posterior q(z|x) of the KL autoencoder."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over latents `[B, C, h, w]` (Kingma & Welling 2014).

    `logvar=None` is a point mass at `mean` (an autoencoder built with `double_z=False`):
    sampling returns the mean and `kl()` keeps only the mean term, 0.5 * sum(mean^2), because the
    variance terms of a point mass are infinite and carry no gradient anyway.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor | None,
        *,
        logvar_range: tuple[float, float] = (-30.0, 20.0),
    ) -> None:
        self.mean = mean
        # Clamping keeps exp(logvar) finite in fp32 (exp(20) ~ 5e8, exp(-30) ~ 1e-13).
        self.logvar = None if logvar is None else logvar.clamp(*logvar_range)

    @property
    def std(self) -> torch.Tensor:
        """exp(logvar / 2); zeros for a point mass."""
        if self.logvar is None:
            return torch.zeros_like(self.mean)
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick, K&W 2014 sec. 2.4)."""
        if self.logvar is None:
            return self.mean
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, `[B]`, summed over latent elements (K&W 2014, appendix B):

            KL = 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)
        """
        # float32: a sum over thousands of elements loses too much in bf16.
        mean = self.mean.float()
        dims = list(range(1, mean.ndim))
        if self.logvar is None:
            return 0.5 * mean.pow(2).sum(dim=dims)
        logvar = self.logvar.float()
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=dims)
