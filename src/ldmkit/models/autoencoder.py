"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1), as a codec
that owns its latent normalisation.

    encode_raw(images) = mean (or a sample) of q(z | x)          (diffusers' convention)
    encode(images)     = (encode_raw(images) - latent_shift) * latent_scale
    decode(latents)    = decode_raw(latents / latent_scale + latent_shift)

`latent_shift` / `latent_scale` are per-channel buffers saved in the state dict, measured on the
training data (`set_latent_stats`), so no magic 0.18215 travels between scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ldmkit.errors import UserError
from ldmkit.models.input_dtype import check_input_dtype
from ldmkit.models.input_size import check_input_size, smallest_groups
from ldmkit.models.config_io import MAX_BLOCKS, MAX_LEVELS, JsonConfig, int_tuple
from ldmkit.models.distributions import DiagonalGaussian
from ldmkit.models.vae_coders import Decoder, Encoder

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "DiagonalGaussian"]


@dataclass
class AutoencoderKLConfig(JsonConfig):
    """Architecture of `AutoencoderKL`; the defaults are Stable Diffusion's KL-f8 autoencoder.

    `block_channels[i]` is the width of level i; each level but the last halves the resolution,
    so `downsample_factor = 2 ** (len(block_channels) - 1)` (3 levels: f4, 4 levels: f8).
    `double_z` makes the encoder predict a log-variance beside the mean (the KL autoencoder);
    without it the posterior is a point mass.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    num_res_blocks: int = 2
    latent_channels: int = 4
    double_z: bool = True
    norm_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True
    logvar_min: float = -30.0
    logvar_max: float = 20.0

    def __post_init__(self) -> None:
        self.block_channels = int_tuple(self.block_channels, "AutoencoderKLConfig.block_channels")
        for name in ("in_channels", "out_channels", "num_res_blocks", "latent_channels", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"AutoencoderKLConfig.{name} must be a positive integer, got {value!r}")
        if not self.block_channels or any(c < 1 for c in self.block_channels):
            raise UserError(f"AutoencoderKLConfig.block_channels must be positive ints, got {self.block_channels}")
        if len(self.block_channels) > MAX_LEVELS or self.num_res_blocks > MAX_BLOCKS:  # see UNetConfig
            raise UserError(f"AutoencoderKLConfig: at most {MAX_LEVELS} levels of at most {MAX_BLOCKS} blocks, got "
                            f"{len(self.block_channels)} of {self.num_res_blocks}")
        if not self.norm_eps > 0:
            raise UserError(f"AutoencoderKLConfig.norm_eps must be positive, got {self.norm_eps}")
        bad = [c for c in self.block_channels if c % self.norm_groups != 0]
        if bad:
            raise UserError(f"AutoencoderKLConfig.norm_groups={self.norm_groups} does not divide widths {bad}")
        if not self.logvar_min < self.logvar_max:
            raise UserError("AutoencoderKLConfig: logvar_min must be below logvar_max")

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.block_channels) - 1)


# The latent normalisation buffers: ldmkit's own (no other format stores them as weights), kept in
# float32 whatever the weights' dtype.
LATENT_BUFFERS = ("latent_shift", "latent_scale")


class AutoencoderKL(nn.Module):
    """Encoder -> quant_conv (1x1) -> q(z|x) ... z -> post_quant_conv (1x1) -> Decoder.

    images: `[B, in_channels, H, W]` in [-1, 1], H and W divisible by `downsample_factor`;
    latents: `[B, latent_channels, H/f, W/f]`.
    """

    def __init__(self, config: AutoencoderKLConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderKLConfig):
            raise UserError(f"AutoencoderKL expects an AutoencoderKLConfig, got {type(config).__name__}")
        self.config = c = config
        moments = c.latent_channels * (2 if c.double_z else 1)
        args = (c.block_channels, c.num_res_blocks, c.norm_groups, c.norm_eps, c.mid_attention)
        self.encoder = Encoder(c.in_channels, moments, *args)
        self.decoder = Decoder(c.latent_channels, c.out_channels, *args)
        self.quant_conv = nn.Conv2d(moments, moments, 1)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)
        # Images are divisible by f, so only the latent resolution (the encoder's last level and
        # middle, the decoder's middle and first level) can be 1x1: the groups there bound the size.
        enc, dec = self.encoder, self.decoder
        self._encoder_groups = smallest_groups([*[[level] for level in enc.down_blocks[:-1]],
                                                [enc.down_blocks[-1], enc.mid_block, enc.norm_out]])
        self._decoder_groups = smallest_groups([[dec.mid_block, *dec.up_blocks[0].resnets]])
        self.register_buffer("latent_shift", torch.zeros(c.latent_channels), persistent=True)
        self.register_buffer("latent_scale", torch.ones(c.latent_channels), persistent=True)

    def _check_tensor(self, value: torch.Tensor, name: str, weight: torch.Tensor) -> None:
        """`UserError` naming `name` for what the first convolution would refuse in torch's words
        ("Tensor on device cpu is not on the expected device meta!"): metadata only, no sync."""
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.device != weight.device:
            raise UserError(f"{name} are on {value.device}, the autoencoder on {weight.device}: move them there "
                            f"({name}.to({str(weight.device)!r}))")

    def _check_images(self, images: torch.Tensor) -> None:
        c = self.config
        f = c.downsample_factor
        self._check_tensor(images, "images", self.quant_conv.weight)
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise UserError(f"images must have shape [B, {c.in_channels}, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise UserError(f"image size {tuple(images.shape[-2:])} is not divisible by the downsample factor {f}")
        check_input_size(images, self._encoder_groups, True, "autoencoder", name="images", multiple=f)
        check_input_dtype(images, self.quant_conv.weight, "the images")

    def posterior(self, images: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) for a batch of images in [-1, 1]."""
        self._check_images(images)
        moments = self.quant_conv(self.encoder(images))  # [B, moments, h, w]
        c = self.config
        if c.double_z:
            mean, logvar = moments.chunk(2, dim=1)  # 2 x [B, latent, h, w]
        else:
            mean, logvar = moments, None
        return DiagonalGaussian(mean, logvar, logvar_range=(c.logvar_min, c.logvar_max))

    def encode_raw(
        self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Unnormalised latents: the posterior mean, or a sample of it when `sample=True`."""
        post = self.posterior(images)
        return post.sample(generator) if sample else post.mean

    def _check_latents(self, z: torch.Tensor) -> None:
        self._check_tensor(z, "latents", self.post_quant_conv.weight)
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise UserError(f"latents must have shape [B, {self.config.latent_channels}, h, w], got {tuple(z.shape)}")
        check_input_size(z, self._decoder_groups, True, "autoencoder's decoder", name="latents")
        check_input_dtype(z, self.post_quant_conv.weight, "the latents")

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents `[B, latent, h, w]` -> images `[B, out, h*f, w*f]` (not clamped)."""
        self._check_latents(z)
        return self.decoder(self.post_quant_conv(z))

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return self.latent_shift.to(like.dtype).view(shape), self.latent_scale.to(like.dtype).view(shape)

    def encode(
        self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised latents `(raw - latent_shift) * latent_scale`, what the diffusion model sees."""
        raw = self.encode_raw(images, sample=sample, generator=generator)
        shift, scale = self._stats(raw)
        return (raw - shift) * scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in about [-1, 1] (not clamped)."""
        self._check_latents(latents)
        shift, scale = self._stats(latents)
        return self.decode_raw(latents / scale + shift)

    def forward(
        self, images: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct images through a posterior sample (or the mean); returns (reconstruction, posterior)."""
        # images: [B, in_channels, H, W] -> reconstruction [B, out_channels, H, W], posterior over
        # [B, latent_channels, H/f, W/f] (f = downsample_factor)
        post = self.posterior(images)
        z = post.sample(generator) if sample else post.mean
        return self.decode_raw(z), post

    @torch.no_grad()
    def set_latent_stats(
        self,
        shift: float | Sequence[float] | torch.Tensor,
        scale: float | Sequence[float] | torch.Tensor,
    ) -> None:
        """Set the per-channel normalisation (a scalar applies to every channel).

        Typically shift = per-channel mean and scale = 1 / per-channel std of the raw latents of
        the training set, so the diffusion model sees roughly unit-variance latents (Rombach et al.
        2022, sec. 4.3.2, rescale by one global std; per channel is the same idea, finer).
        """
        n = self.config.latent_channels
        values = []
        for name, value in (("shift", shift), ("scale", scale)):
            t = torch.as_tensor(value, dtype=torch.float32).flatten()
            if t.numel() == 1:
                t = t.expand(n)
            if t.numel() != n:
                raise UserError(f"latent {name} needs 1 or {n} values (one per latent channel), got {t.numel()}")
            if not torch.isfinite(t).all():
                raise UserError(f"latent {name} must be finite, got {t.tolist()}")
            values.append(t)
        if (values[1] <= 0).any():
            raise UserError(f"latent scale must be positive, got {values[1].tolist()}")
        self.latent_shift.copy_(values[0])
        self.latent_scale.copy_(values[1])
