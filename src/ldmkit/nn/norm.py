"""GroupNorm construction with a clear error when the group count does not divide the width."""

from __future__ import annotations

from torch import nn

from ldmkit.errors import UserError


def group_norm(channels: int, groups: int, eps: float) -> nn.GroupNorm:
    """`nn.GroupNorm(groups, channels, eps)` (Wu & He 2018), checked before PyTorch's own assert."""
    if groups < 1 or channels % groups != 0:
        raise UserError(
            f"GroupNorm: {channels} channels cannot be split into {groups} groups; "
            "choose norm_groups that divides every channel width"
        )
    return nn.GroupNorm(groups, channels, eps=eps)
