"""`UNetConfig`: every architectural choice of the UNet, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from ldmkit.errors import UserError
from ldmkit.models.config_io import MAX_BLOCKS, MAX_LEVELS, JsonConfig, int_tuple


@dataclass
class UNetConfig(JsonConfig):
    """Architecture of `ldmkit.models.UNet` (JSON round-trip with `to_dict` / `from_dict`).

    Level i has `base_channels * channel_mult[i]` channels and runs at 1/2**i of the input
    resolution. Levels listed in `attention_levels` get an attention layer after each ResNet
    block: self-attention, or, when `context_dim` is set, a SpatialTransformer with
    cross-attention to the context (Rombach et al. 2022).

    Conditioning, all summed into one embedding that every ResNet block receives:
    timestep (always); class label when `num_classes` is set (the embedding table has
    `num_classes + 1` rows, the last one, id `num_classes`, being the null class for
    classifier-free guidance); a free vector of width `cond_dim` through an MLP.

    Exactly one of `num_heads` (same head count at every level, SD style) and `head_dim`
    (heads = channels // head_dim, ADM style) is set.
    """

    in_channels: int = 4
    out_channels: int = 4
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1, 2, 3)
    mid_attention: bool = True
    num_heads: int | None = None
    head_dim: int | None = 64
    dropout: float = 0.0
    num_classes: int | None = None
    cond_dim: int | None = None
    context_dim: int | None = None
    transformer_depth: int = 1
    linear_projection: bool = False
    norm_groups: int = 32
    norm_eps: float = 1e-5
    resnet_scale_shift: bool = False
    time_embed_dim: int | None = None
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    zero_init_output: bool = True
    gradient_checkpointing: bool = False
    conv_resample: bool = True

    def __post_init__(self) -> None:
        self.channel_mult = int_tuple(self.channel_mult, "UNetConfig.channel_mult")
        self.attention_levels = tuple(sorted(set(int_tuple(self.attention_levels, "UNetConfig.attention_levels"))))
        self.validate()

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Channel width of each level."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def emb_dim(self) -> int:
        """Width of the timestep (+ class + cond) embedding fed to every ResNet block."""
        return self.time_embed_dim if self.time_embed_dim is not None else 4 * self.base_channels

    @property
    def downsample_factor(self) -> int:
        """Input sizes divisible by this go through without any interpolation to a skip's size."""
        return 2 ** (len(self.channel_mult) - 1)

    def heads_at(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of an attention layer over `channels` channels."""
        if self.num_heads is not None:
            return self.num_heads, channels // self.num_heads
        assert self.head_dim is not None
        return channels // self.head_dim, self.head_dim

    def validate(self) -> None:
        """Raise `UserError` naming the first inconsistent field."""
        positive = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "num_res_blocks": self.num_res_blocks,
            "transformer_depth": self.transformer_depth,
            "norm_groups": self.norm_groups,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UserError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise UserError(
                f"UNetConfig.channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}"
            )
        # Bounds no real UNet comes near (SD: 4 levels, 2 blocks, depth 1; SDXL depth 10), so a model
        # file's few bytes of config cannot have a loader build millions of modules before the weights say no.
        for name, value, bound in (("channel_mult's levels", len(self.channel_mult), MAX_LEVELS),
                                   ("num_res_blocks", self.num_res_blocks, MAX_BLOCKS),
                                   ("transformer_depth", self.transformer_depth, MAX_BLOCKS)):
            if value > bound:
                raise UserError(f"UNetConfig: {value} {name} is more than the {bound} ldmkit builds")
        if not self.norm_eps > 0:
            raise UserError(f"UNetConfig.norm_eps must be positive, got {self.norm_eps}")
        bad_levels = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mult)]
        if bad_levels:
            raise UserError(
                f"UNetConfig.attention_levels {bad_levels} out of range: levels are 0..{len(self.channel_mult) - 1}"
            )
        if (self.num_heads is None) == (self.head_dim is None):
            raise UserError("UNetConfig: set exactly one of num_heads and head_dim (head_dim is 64 unless given: "
                            "with num_heads, pass head_dim=None)")
        for name in ("num_heads", "head_dim"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"UNetConfig.{name} must be a positive integer, got {value!r}")
        attended = [self.block_channels[lv] for lv in self.attention_levels]
        if self.mid_attention:
            attended.append(self.block_channels[-1])
        for channels in attended:
            split = self.num_heads if self.num_heads is not None else self.head_dim
            if channels % split != 0:
                raise UserError(
                    f"UNetConfig: an attention layer has {channels} channels, not divisible by "
                    f"{'num_heads' if self.num_heads is not None else 'head_dim'}={split}"
                )
        for channels in self.block_channels:
            if channels % self.norm_groups != 0:
                raise UserError(f"UNetConfig.norm_groups={self.norm_groups} does not divide channel width {channels}")
        for name in ("num_classes", "cond_dim", "context_dim", "time_embed_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"UNetConfig.{name} must be None or a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
