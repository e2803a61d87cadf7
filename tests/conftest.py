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


# ---- a stand-in for the bundled models (tests/test_pretrained.py, tests/test_model_sources.py)


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    """A random tiny class-conditional model (red, green, blue) at 16 px, as `ldm train` writes it."""
    from tiny_models import save_tiny_class_model

    return save_tiny_class_model(tmp_path_factory.mktemp("run") / "model.safetensors", ["red", "green", "blue"])


@pytest.fixture(scope="module")
def bundled_folder(fp32_file, tmp_path_factory):
    """A stand-in for `ldmkit/pretrained/` holding emoji.safetensors (fp16) and no fashion-mnist file."""
    from ldmkit.interop import convert

    folder = tmp_path_factory.mktemp("pretrained")
    convert(fp32_file, folder / "emoji.safetensors", dtype="fp16")
    return folder


@pytest.fixture
def registry(bundled_folder, monkeypatch):
    """The bundled models read from `bundled_folder` for this test."""
    from ldmkit import pretrained

    monkeypatch.setattr(pretrained, "bundled_dir", lambda: bundled_folder)
    return bundled_folder
