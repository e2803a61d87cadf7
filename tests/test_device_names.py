"""`--device` / `device=` words: what exists here is taken, anything else is one line naming the choices."""
from __future__ import annotations

import pytest
import torch

from ldmkit.device import resolve_device
from ldmkit.errors import UserError


def test_the_cpu_and_auto_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None) == resolve_device("auto") and resolve_device("auto").type == here


@pytest.mark.parametrize("name", ["meta", "xpu"])
def test_a_device_that_holds_no_values_or_is_not_ldmkits_is_refused(name) -> None:
    """device="meta" was taken, and generation failed at the decode, copying out of a meta tensor."""
    with pytest.raises(UserError, match=f"device '{name}' cannot run ldmkit: use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_a_word_that_is_no_device_is_refused() -> None:
    with pytest.raises(UserError, match="unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
