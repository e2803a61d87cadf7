"""The smallest input a network takes, said before one of its layers refuses it in torch's words.

A GroupNorm with one channel per group refuses a 1x1 feature map ("Expected more than 1 value per
channel when training", in eval mode too: a group of one value has no variance to divide by), and
an average pool refuses a map it would empty ("Output size is too small"). Which input sizes reach
such a map depends on the widths and norm groups of each level, so the limit is computed from the
network, never assumed. Only shapes are read: no cost, and no graph break under torch.compile.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ldmkit.errors import UserError


def smallest_groups(levels: Sequence[Sequence[nn.Module]]) -> tuple[int, ...]:
    """Per level (resolution 1/2**level), the fewest channels in one group of any GroupNorm among
    that level's modules; 2 where there is none (any map of at least one pixel is then fine)."""
    widths = []
    for modules in levels:
        norms = [m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)]
        widths.append(min((m.num_channels // m.num_groups for m in norms), default=2))
    return tuple(widths)


def _failing_level(h: int, w: int, groups: Sequence[int], ceil: bool) -> tuple[int, int, int] | None:
    """(level, h, w) of the first feature map a layer refuses for an h x w input, or None."""
    for level, smallest in enumerate(groups):
        if h < 1 or w < 1 or h * w == 1 and smallest == 1:
            return level, h, w
        # stride-2 conv3x3 with padding 1: ceil(h / 2); 2x2 average pool: floor(h / 2)
        h, w = (-(-h // 2), -(-w // 2)) if ceil else (h // 2, w // 2)
    return None


def check_input_size(x: torch.Tensor, groups: Sequence[int], ceil: bool, owner: str, *, name: str = "x",
                     multiple: int = 1) -> None:
    """`UserError` naming the smallest square input (a `multiple` of pixels on a side) when `x`
    `[B, C, H, W]` is too small for a network whose levels have `groups` (see `smallest_groups`)
    and halve by `ceil` or floor."""
    height, width = x.shape[-2], x.shape[-1]
    failed = _failing_level(height, width, groups, ceil)
    if failed is None:
        return
    level, h, w = failed
    side = next(s for s in itertools.count(multiple, multiple) if _failing_level(s, s, groups, ceil) is None)
    why = "empty" if h < 1 or w < 1 else "one value per group of a GroupNorm with one channel per group"
    verb = "are" if name.endswith("s") else "is"  # "images ... are", "x ... is"
    raise UserError(f"{name} of {height}x{width} pixels {verb} too small for this {owner}: its feature map at "
                    f"1/{2**level} scale is {h}x{w}, {why}; the smallest square input it takes is {side}x{side}")
