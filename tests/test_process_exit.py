"""How `ldm` ends its process (cli/process_exit.py): after CUDA was used, Python's exit work
(threads, atexit handlers, flushed output) and then `os._exit`, skipping the interpreter's teardown;
otherwise a normal exit. CUDA is stood in for by patching `cuda_used` in a child process."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import atexit, sys, threading, time
    from pathlib import Path
    import ldmkit.cli.process_exit as process_exit

    out = Path(sys.argv[1])
    used = sys.argv[2] == "cuda"
    process_exit.cuda_used = lambda: used

    class Teardown:  # a module global's finaliser: runs in the interpreter's teardown only
        def __del__(self):
            (out / "teardown").write_text("ran")

    keep = Teardown()
    atexit.register(lambda: (out / "atexit").write_text("ran"))

    def late_writer():
        time.sleep(0.3)
        (out / "thread").write_text("ran")

    threading.Thread(target=late_writer).start()  # not a daemon: exit waits for it
    print("unflushed output", end="")  # a pipe's stdout is block-buffered: lost unless flushed
    sys.argv = ["ldm", "info", str(out / "missing")]
    from ldmkit.cli import entry
    entry()
""")


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_process_ends_with_its_exit_work_done(tmp_path, device):
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), device],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr  # `ldm info` on a missing model: a user error
    assert "ldm info: error:" in done.stderr and done.stdout == "unflushed output"
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "ran"
    # after CUDA the interpreter's teardown is skipped; without it, it runs as usual
    assert (tmp_path / "teardown").exists() == (device == "cpu")


def test_cuda_used_does_not_import_torch(monkeypatch):
    from ldmkit.cli import process_exit

    monkeypatch.delitem(sys.modules, "torch")
    assert process_exit.cuda_used() is False and "torch" not in sys.modules
