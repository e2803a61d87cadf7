"""Shared test settings.

One intra-op thread: the suite's models are tiny, and on a busy 2-core CI machine two threads
fighting over small convolutions made steps several times slower.

Triton's interpreter: ldmkit's Triton kernels (tests/test_norm_silu.py) run on the CPU. Triton
reads the switch when it defines its own library functions, so it is set before anything can
import Triton (torch.compile may).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

from ldmkit import compile_fallback  # noqa: E402


@pytest.fixture(autouse=True)
def _forget_compile_failures():
    """Each test starts where compiling has not failed yet: `compile_fallback` remembers a
    compiler failure (and what it warned) for the rest of the process."""
    yield
    compile_fallback._FAILED.clear()
    compile_fallback._WARNED.clear()
