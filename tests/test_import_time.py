"""Importing ldmkit does not import the compiler (torch._dynamo, torch._inductor): those imports
took ~1.3 s of every `ldm` command's start (`ldm --help`: 3.0 s -> 1.7 s on two CPU cores), and
the code that compiles imports them when it runs."""
from __future__ import annotations

import subprocess
import sys

import torch


def test_importing_ldmkit_leaves_the_compiler_unimported():
    code = ("import sys, ldmkit, ldmkit.cli, ldmkit.pipeline, ldmkit.train, ldmkit.eval, ldmkit.interop, ldmkit.serve\n"
            "print(sorted(m for m in ('torch._dynamo', 'torch._inductor') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def test_the_attention_device_check_is_marked_as_the_public_decorator_marks():
    """attention_op marks `_cudnn_attention_device` for dynamo by hand (the decorator would import
    dynamo): it must carry every attribute `torch.compiler.assume_constant_result` sets."""
    from ldmkit.nn.attention_op import _cudnn_attention_device

    def fresh() -> bool:
        return True

    before = dict(vars(fresh))
    torch.compiler.assume_constant_result(fresh)
    marks = {k: v for k, v in vars(fresh).items() if before.get(k, object()) is not v}
    assert marks and all(getattr(_cudnn_attention_device, k, None) == v for k, v in marks.items())
