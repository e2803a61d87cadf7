"""Building a model for weights from a file: checked against them before any memory is used.

A model file states its architecture in a few bytes of metadata (or in the shapes of its tensors,
which safetensors lets be empty), and the weights come beside it. Built first and checked after,
a file of a few hundred bytes naming 20,480 base channels had the loader allocate ~57 GB before
the mismatch could be seen. Here the model is first built on the meta device (sizes only, no
storage), its state dict compared with the weights by name, shape and kind, and only a model
whose every tensor is present in the file at full size is built for real: its memory is then
bounded by the file's.

The weights are also checked for NaN and infinity: such a file loads, and generates black images
without a word.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from ldmkit.errors import UserError

ModuleT = TypeVar("ModuleT", bound=nn.Module)
_SHOWN = 8  # names listed per kind of problem before "... and N more"


def name_list(keys: Sequence[str]) -> str:
    """`keys` sorted and joined, cut after the first few ("... and N more")."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def key_problems(given: Iterable[str], expected: Iterable[str]) -> list[str]:
    """["missing keys: ...", "unexpected keys: ..."] for what `given` lacks and has beyond `expected`."""
    given, expected = set(given), set(expected)
    problems = []
    if expected - given:
        problems.append(f"missing keys: {name_list(list(expected - given))}")
    if given - expected:
        problems.append(f"unexpected keys: {name_list(list(given - expected))}")
    return problems


def _kind_fits(expected: torch.Tensor, given: torch.Tensor) -> bool:
    """A floating-point tensor takes only real floating-point values (bool, integer or complex ones
    load by a silent cast); an integer buffer takes integers."""
    if expected.dtype.is_floating_point:
        return given.dtype.is_floating_point
    return not given.dtype.is_floating_point and not given.dtype.is_complex


def check_fit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], *, source: str,
              target: str) -> None:
    """UserError unless `given` has exactly `expected`'s names, with its shapes and kinds of values,
    all finite. `source` names the weights ("FILE: the unet.* weights"), `target` the model."""
    common = sorted(set(expected) & set(given))
    mismatched = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in common
                  if tuple(given[k].shape) != tuple(expected[k].shape)]
    wrong_kind = [f"{k} {given[k].dtype} for {expected[k].dtype}" for k in common
                  if not _kind_fits(expected[k], given[k])]
    problems = key_problems(given, expected)
    if mismatched:
        problems.append(f"shape mismatches (given vs model): {name_list(mismatched)}")
    if wrong_kind:
        problems.append(f"values of the wrong kind: {name_list(wrong_kind)}")
    if problems:
        raise UserError(f"{source} do not fit {target}: " + "; ".join(problems))
    not_finite = [k for k in common if given[k].dtype.is_floating_point and not bool(torch.isfinite(given[k]).all())]
    if not_finite:
        raise UserError(f"{source} hold NaN or infinite values ({name_list(not_finite)}): the file is damaged, or was "
                        "saved from a training run that diverged; images made with it would be blank")


def build_fitted(make: Callable[[], ModuleT], state_dict: Mapping[str, torch.Tensor], *, source: str) -> ModuleT:
    """`make()` holding `state_dict` (strict), built for real only once a meta-device build of it has
    passed `check_fit` against the weights."""
    try:
        with torch.device("meta"):
            skeleton = make()
    except RuntimeError as error:  # sizes whose product overflows int64: no file could hold them
        detail = (str(error).strip().splitlines() or [""])[0][:120]
        raise UserError(f"{source}: their config asks for tensors of impossible sizes ({detail})") from None
    check_fit(skeleton.state_dict(), state_dict, source=source, target=type(skeleton).__name__)
    module = make()
    module.load_state_dict(dict(state_dict), strict=True)
    return module
