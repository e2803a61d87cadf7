"""Where the seconds between `ldm`'s last line and the process's exit go (benchmarks/NOTES.md v18).

Runs one `ldm` command in this process, then lets Python shut down as `ldm` would, printing a
wall-clock stamp (`exit_probe WHAT UNIX_TIME`) at each point it can see, and every `--dump-every`
seconds after `ldm` returned the Python stack of every thread (faulthandler), so a slow exit
shows where it waits. Stamps, in order:

- `main returned`: the command's work is done (its last line is printed);
- `shutdown_compile_workers done` (with `--shutdown-workers`): inductor's compile-worker pool
  shut down here, explicitly, instead of in its atexit handler;
- `first atexit handler` / `last atexit handler`: around the atexit handlers registered while
  the command ran (inductor's pool shutdown among them; registered first, runs last);
- the caller stamps the process's end (`date +%s.%N`): what comes after the last handler is
  module teardown and C++ destructors (CUDA, NCCL).

With `--ldm-exit` the process ends as the `ldm` command ends it (`ldmkit.cli.process_exit.finish`:
after CUDA, Python's exit work and then `os._exit`, skipping the interpreter's teardown); the
stamp `finish` marks its start. Without it the probe exits as a plain Python program does,
as `ldm` did before v18.

    python3 benchmarks/exit_probe.py [--shutdown-workers] [--ldm-exit] train --data emoji --preset emoji ...
    python3 benchmarks/exit_probe.py --smoke     # CPU: the tiny preset, a few steps
"""

from __future__ import annotations

import atexit
import faulthandler
import sys
import time


def stamp(what: str) -> None:
    print(f"exit_probe {what} {time.time():.3f}", file=sys.stderr, flush=True)


atexit.register(stamp, "last atexit handler")  # before anything else registers: runs last
PROBE_FLAGS = ("--shutdown-workers", "--ldm-exit", "--dump-every", "--smoke")


def main() -> int:
    argv = sys.argv[1:]
    own: list[str] = []  # the probe's flags come first; `ldm`'s arguments from the first other one
    while argv and argv[0] in PROBE_FLAGS:
        own.append(argv.pop(0))
        if own[-1] == "--dump-every":
            own.append(argv.pop(0))
    ldm_args = argv[1:] if argv[:1] == ["--"] else argv  # torchrun drops a `--`, python keeps it
    dump_every = float(own[own.index("--dump-every") + 1]) if "--dump-every" in own else 1.0
    if "--smoke" in own:
        import tempfile
        # 16 px: the latent cache of the emoji set's 1,815 images is most of the work at 32
        ldm_args = ["train", "--data", "emoji", "--preset", "tiny", "--image-size", "16", "--vae-steps", "3",
                    "--steps", "3", "--device", "cpu", "--quiet", "--out", tempfile.mkdtemp(prefix="exit_probe_")]
    if not ldm_args:
        print(__doc__, file=sys.stderr)
        return 2

    from ldmkit.cli import main as ldm_main

    stamp("start")
    rc = ldm_main(ldm_args)
    stamp("main returned")
    if "--shutdown-workers" in own:
        from torch._inductor.async_compile import shutdown_compile_workers
        shutdown_compile_workers()
        stamp("shutdown_compile_workers done")
    atexit.register(stamp, "first atexit handler")  # after every handler the command registered: runs first
    faulthandler.dump_traceback_later(dump_every, repeat=True, file=sys.stderr)
    if "--ldm-exit" in own:
        from ldmkit.cli import process_exit

        stamp("finish")
        process_exit.finish(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
