"""JSON round-trip for the model config dataclasses (they go into run folders and checkpoints)."""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from ldmkit.errors import UserError

ConfigT = TypeVar("ConfigT", bound="JsonConfig")


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
            kwargs[key] = value
        return cls(**kwargs)


def _is_tuple_type(hint: Any) -> bool:
    """True for `tuple[...]` and `tuple[...] | None`."""
    if typing.get_origin(hint) is tuple or hint is tuple:
        return True
    return any(_is_tuple_type(arg) for arg in typing.get_args(hint) if arg is not type(None))
