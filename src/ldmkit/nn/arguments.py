"""Constructor arguments of the building blocks, checked where they are given: torch builds
`nn.Conv2d(0, 64, 3)` or `nn.GroupNorm(32, 0)` with at most a warning, and the block then fails
at its first call, far from the mistake, or not at all."""

from __future__ import annotations

import numbers

from ldmkit.errors import UserError


def check_positive_ints(owner: str, **values: object) -> None:
    """`UserError` "OWNER: NAME must be a positive int, got VALUE" for the first value that is not
    an int >= 1 (numpy ints count; bools, floats and None do not)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UserError(f"{owner}: {name} must be a positive int, got {value!r}")
