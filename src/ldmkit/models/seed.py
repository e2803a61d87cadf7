"""`LatentDiffusionModel`: the seed project's API, kept working as a thin wrapper over `UNet`."""

from __future__ import annotations

import torch
from torch import nn

from ldmkit.errors import UserError
from ldmkit.models.timestep_input import timesteps_tensor
from ldmkit.models.unet import UNet, UNetConfig


class LatentDiffusionModel(nn.Module):
    """A UNet denoiser conditioned on a timestep and on a free vector (the seed's "latent").

    Example::

        model = LatentDiffusionModel(input_channels=3, latent_dim=512, image_size=(64, 64), num_heads=4)
        out = model(torch.randn(8, 3, 64, 64), torch.randn(8, 512))  # [8, 3, 64, 64]

    `model(x, latent, timesteps=None)`:
      x: `[B, input_channels, H, W]`; latent: `[B, latent_dim]`; timesteps: `[B]` or scalar,
      discrete indices in [0, T). Returns a tensor with the shape of `x`.
      With `latent_dim=None` the model has no vector conditioning: pass `latent=None`.

    Omitting `timesteps` means t = 0 for every sample: the nearly clean end of the diffusion
    process (the network then acts as a conditioned refiner of an almost noise-free input).
    Pass the timesteps explicitly whenever the model is trained or sampled as a diffusion model.

    The latent vector goes through an MLP (Linear, SiLU, Linear) and is added to the timestep
    embedding, which every ResNet block receives, so it is injected at every resolution of the
    down path, the middle and the up path.

    Architecture: `len(channel_mult)` levels of `num_res_blocks` ResNet blocks with
    `base_channels * channel_mult[i]` channels; `num_heads`-head self-attention at each level
    whose feature map is at most `attention_resolution` pixels on its short side, and in the
    middle. Unlike `UNet`'s default, the output conv is randomly (not zero) initialised, so an
    untrained model already responds to its inputs as the seed's did. The underlying network is
    `self.unet` (a `ldmkit.models.UNet`, config in `self.unet.config`).
    """

    def __init__(
        self,
        input_channels: int = 3,
        latent_dim: int | None = 512,
        image_size: int | tuple[int, int] = (64, 64),
        num_heads: int = 4,
        *,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 1,
        attention_resolution: int = 16,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
                isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in size):
            raise UserError(f"image_size must be a positive int or (height, width) of ints, got {image_size!r}")
        size = tuple(size)
        for name, value in (("input_channels", input_channels), ("latent_dim", latent_dim), ("num_heads", num_heads)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1) and not (
                    name == "latent_dim" and value is None):  # checked here, so errors name the seed's arguments
                allowed = "a positive int or None" if name == "latent_dim" else "a positive int"
                raise UserError(f"{name} must be {allowed}, got {value!r}")
        self.image_size = size
        self.input_channels, self.latent_dim = input_channels, latent_dim
        attention_levels = tuple(
            level for level in range(len(channel_mult)) if min(size) // 2**level <= attention_resolution
        )
        config = UNetConfig(
            in_channels=input_channels,
            out_channels=input_channels,
            base_channels=base_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            mid_attention=True,
            num_heads=num_heads,
            head_dim=None,
            dropout=dropout,
            cond_dim=latent_dim,
            norm_groups=norm_groups,
            zero_init_output=False,
        )
        self.unet = UNet(config)

    def forward(
        self, x: torch.Tensor, latent: torch.Tensor | None, timesteps: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """`x` `[B, input_channels, H, W]`, `latent` `[B, latent_dim]` (None when latent_dim is None),
        `timesteps` a scalar or `[B]` of indices in [0, T) (None: t = 0) -> the shape of `x`."""
        # x: [B, C, H, W], latent: [B, latent_dim], timesteps: [B] -> [B, C, H, W]
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise UserError(f"x must be a tensor of shape [B, {self.input_channels}, H, W], got "
                            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        batch = x.shape[0]
        if self.latent_dim is None:
            if latent is not None:
                raise UserError("latent given, but this model was built with latent_dim=None (no vector conditioning)")
        elif not isinstance(latent, torch.Tensor) or tuple(latent.shape) != (batch, self.latent_dim):
            got = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise UserError(f"latent must be a tensor of shape [{batch}, {self.latent_dim}] (batch, latent_dim), "
                            f"got {got}")
        # Checked here, so that errors name the seed's argument `timesteps`, not the UNet's `t`;
        # on the model's device, so that an x elsewhere gets the UNet's message about x.
        device = self.unet.conv_in.weight.device
        if timesteps is None:
            timesteps = torch.zeros(batch, device=device)
        timesteps = timesteps_tensor(timesteps, batch, device, name="timesteps", owner="the model")  # [B]
        return self.unet(x, timesteps, cond=latent)
