"""How the `ldm` process ends: without Python's teardown once it has used a GPU.

After a job that used CUDA, the interpreter's own shutdown takes seconds after the last line:
after a short `ldm train` on an H200, 0.8 s in the atexit handlers (inductor's compile workers)
and then 2.5 s with no Python frame on the stack, in module teardown and C++ destructors (CUDA
graphs, compiled kernels, the CUDA context), which the driver and the operating system undo
anyway when the process ends (benchmarks/NOTES.md v18; on bigger jobs 4-12 s in all). So once the
verb has returned and CUDA was used, `finish` does the part of Python's exit that matters (the
threading module's exit work and a join of non-daemon threads, every atexit handler: logging,
multiprocessing's children, inductor's compile workers; stdout and stderr flushed) and ends the
process with `os._exit`. Every file ldmkit writes is closed by then (checkpoints and inference
files are written atomically, the log is flushed line by line). Without CUDA, or where this Python
lacks the hooks used, the process exits normally.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def finish(code: int) -> NoReturn:
    """End the process with exit status `code` (see the module doc)."""
    join_threads = getattr(threading, "_shutdown", None)  # what Python's exit runs first
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if not cuda_used() or join_threads is None or run_exit_handlers is None:
        sys.exit(code)
    join_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed, detached, or a reader that left
            pass
    os._exit(code)


def cuda_used() -> bool:
    """Whether this process has initialised CUDA (without importing torch if nothing did)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()
