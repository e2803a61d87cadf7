"""JSON round-trip for the model config dataclasses (they go into run folders and checkpoints)."""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from ldmkit.errors import UserError

ConfigT = TypeVar("ConfigT", bound="JsonConfig")
MAX_LEVELS = 16  # resolutions of a UNet or VAE: 2**15 times smaller at the last
MAX_BLOCKS = 64  # ResNet blocks per level, transformer blocks per attention layer


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """A list field of whole numbers as a tuple; `UserError` naming `what` for a bare number (`--set
    diffusion.model.channel_mult=3`: "'int' object is not iterable"), a string, or a non-integer."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise UserError(f"{what} must be a list of whole numbers, e.g. [1, 2], got {value!r}")
    items = list(value)
    try:
        if any(isinstance(v, bool) for v in items):
            raise TypeError
        return tuple(int(v) if isinstance(v, float) and v.is_integer() else operator.index(v) for v in items)
    except TypeError:
        raise UserError(f"{what} must be a list of whole numbers, got {items!r}") from None


class JsonConfig:
    """Mixin for dataclasses whose fields are numbers, strings, booleans, None or tuples of those.

    `to_dict()` gives JSON-safe values (tuples become lists); `from_dict()` turns lists back into
    tuples for tuple-typed fields and rejects keys the dataclass does not know, naming them.
    """

    def to_dict(self) -> dict[str, Any]:
        """Field name -> JSON-safe value."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        """Rebuild the config from `to_dict()` output (missing keys take their defaults)."""
        if not isinstance(data, dict):
            raise UserError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        kwargs = {}
        for key, value in data.items():
            if isinstance(value, list) and _is_tuple_type(hints[key]):
                value = tuple(value)
            kwargs[key] = _checked_scalar(cls, key, hints[key], value)
        return cls(**kwargs)


def _checked_scalar(cls: type, name: str, hint: Any, value: Any) -> Any:
    """`value` if it is of a scalar field's annotated type (ints pass as floats, bools only as
    bools, floats finite); UserError otherwise. A model file's metadata is JSON anyone can write:
    `"norm_eps": "x"` loaded and then failed inside the first GroupNorm of a generation."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    scalar = [a for a in allowed if a in (bool, int, float, str)]
    if not scalar:  # a tuple field: its items are checked by `int_tuple` in the dataclass
        return value
    if isinstance(value, bool):
        ok = bool in scalar
    elif isinstance(value, int):
        ok = int in scalar or (float in scalar and abs(value) < 2**1023)  # float() of 10**400 overflows
        value = float(value) if ok and int not in scalar else value
    elif isinstance(value, float):
        ok = float in scalar and math.isfinite(value)
    else:
        ok = isinstance(value, str) and str in scalar
    if not ok:
        names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
        raise UserError(f"{cls.__name__}.{name} must be {names}, got {value!r:.60}")
    return value


def _is_tuple_type(hint: Any) -> bool:
    """True for `tuple[...]` and `tuple[...] | None`."""
    if typing.get_origin(hint) is tuple or hint is tuple:
        return True
    return any(_is_tuple_type(arg) for arg in typing.get_args(hint) if arg is not type(None))
