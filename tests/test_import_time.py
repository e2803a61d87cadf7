"""Importing ldmkit does not import the compiler (torch._dynamo, torch._inductor): those imports
took ~1.3 s of every `ldm` command's start (`ldm --help`: 3.0 s -> 1.7 s on two CPU cores), and
the code that compiles imports them when it runs."""
from __future__ import annotations

import subprocess
import sys

import pytest
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


def test_import_ldmkit_imports_no_torch_until_a_name_is_used():
    code = ("import sys, ldmkit\nprint('torch' in sys.modules)\nfrom ldmkit import UNet, load_model\n"
            "print('torch' in sys.modules, UNet.__name__, all(hasattr(ldmkit, name) for name in ldmkit.__all__))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "UNet", "True"]


def test_ctrl_c_while_the_command_imports_torch_is_one_line(monkeypatch, capsys):
    """`ldm`'s entry point lives outside ldmkit.cli, whose import takes seconds (torch): a Ctrl-C
    then printed a traceback from inside `import torch`."""
    import builtins
    import tomllib
    from pathlib import Path

    from ldmkit import _entry

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ldm"] == "ldmkit._entry:entry"
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "ldmkit.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as stopped:
        _entry.entry()
    assert stopped.value.code == 130 and capsys.readouterr().err == "ldm: interrupted\n"
