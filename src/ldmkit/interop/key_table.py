"""A two-way table between ldmkit weight names and another project's, with per-key tensor
transforms, applied strictly: a name on either side that the table does not know, or a table
entry that the given weights lack, is a `UserError` naming them.

Most entries are one-to-one renames. Some layouts merge several ldmkit tensors into one (the
q/k/v of a legacy attention block are one `qkv` conv) or change a tensor's shape (a 1x1 conv
versus a linear layer); those entries carry a `merge` (ours -> theirs) and a `split`
(theirs -> ours) function that only move numbers, so a round trip is exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from ldmkit.errors import UserError
from ldmkit.models.fitted import key_problems, name_list


Merge = Callable[..., torch.Tensor]
Split = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, ...]"]


def rename(key: str, rules: Sequence[tuple[str, str]]) -> str:
    """Apply regex (pattern, replacement) rules to `key` in order."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def check_keys(given: Sequence[str], expected: Sequence[str], what: str) -> None:
    """`UserError` listing the keys missing from `given` and the unexpected ones in it."""
    problems = key_problems(given, expected)
    if problems:
        raise UserError(f"{what} weights do not fit the expected layout: " + "; ".join(problems))


class KeyTable:
    """ldmkit key -> their key (many ours may share one theirs), with optional transforms.

    `shapes` holds the ldmkit shape of every key, so converted tensors are checked on the way in.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self._theirs: dict[str, str] = {}
        self._groups: dict[str, list[str]] = {}
        self._transforms: dict[str, tuple[Merge, Split]] = {}

    def add(self, ours: str, theirs: str) -> None:
        if ours in self._theirs:
            raise ValueError(f"{ours} mapped twice")
        self._theirs[ours] = theirs
        self._groups.setdefault(theirs, []).append(ours)

    def set_transform(self, theirs: str, merge: Merge, split: Split) -> None:
        """`merge(*ours_tensors) -> theirs_tensor`, `split(theirs_tensor) -> ours tensor(s)`."""
        self._transforms[theirs] = (merge, split)

    def grouped(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """(ldmkit keys, their key) for every entry of their side."""
        for theirs, ours in self._groups.items():
            yield tuple(ours), theirs

    @property
    def their_keys(self) -> list[str]:
        return list(self._groups)

    def to_theirs(self, state_dict: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        """ldmkit weights -> their names and layouts."""
        check_keys(list(state_dict), list(self._theirs), f"ldmkit {what}")
        out = {}
        for theirs, ours in self._groups.items():
            tensors = [state_dict[k] for k in ours]
            if theirs in self._transforms:
                out[theirs] = self._transforms[theirs][0](*tensors)
            else:
                out[theirs] = tensors[0]
        return out

    def to_ours(self, state_dict: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
        """Their weights -> ldmkit names and layouts, every shape checked."""
        check_keys(list(state_dict), self.their_keys, what)
        out: dict[str, torch.Tensor] = {}
        mismatched = []
        for theirs, ours in self._groups.items():
            tensor = state_dict[theirs]
            try:
                parts = self._transforms[theirs][1](tensor) if theirs in self._transforms else tensor
            except RuntimeError:  # a reshape that cannot work: the tensor has the wrong size
                mismatched.append(f"{theirs} {tuple(tensor.shape)}")
                continue
            parts = (parts,) if isinstance(parts, torch.Tensor) else parts
            for key, part in zip(ours, parts):
                if tuple(part.shape) != self.shapes[key]:
                    shapes = f"{tuple(part.shape)} vs {self.shapes[key]}"
                    mismatched.append(f"{theirs} {tuple(tensor.shape)} (as {key}: {shapes})")
                out[key] = part
        if mismatched:
            raise UserError(f"{what} weights have the wrong shape for the config: {name_list(mismatched)}")
        return out
