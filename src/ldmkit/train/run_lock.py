"""One `ldm train` per run folder: an exclusive lock on RUN/train.lock while a run trains.

Two runs writing one folder interleave their checkpoints, models and log lines, and each resumes
from whatever the other saved last. So `ldm train` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on
RUN/train.lock for as long as it runs (rank 0 only under torchrun: the other ranks write
nothing) and a second one refuses at once, naming the holder's pid, which the holder writes
into the file. The kernel releases a flock when its process ends, however it ends, so a killed
run leaves no stale lock: its leftover file is simply locked again by the next run. Readers
(`ldm generate`, `ldm info`) take no lock: the model files and checkpoints they read are
replaced atomically.

The file is removed when the run ends. Removing a lock file races with a run that opened it just
before and locks it just after (it would hold a lock on a file no longer in the folder while a
third run creates and locks a new one), so a run that got the lock checks that the path still
names the file it locked and tries again if not. Without fcntl (Windows) there is no lock.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import warnings
from pathlib import Path
from typing import Iterator

from ldmkit.atomic import process_alive, remove_temporary_files
from ldmkit.errors import UserError
from ldmkit.train.distributed import DistInfo, broadcast_object

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "train.lock"
# flock on a file system that does not do it (some network mounts): train without the lock
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


_held: set[int] = set()  # this process's lock descriptors, which its forked workers inherit


def close_inherited_locks(worker_id: int = 0) -> None:
    """A forked DataLoader worker's `worker_init_fn`: close its copies of the run lock's descriptor,
    which kept the lock held for seconds after the run itself was killed (a rerun was refused,
    naming a dead pid). Closing a copy releases nothing while the run lives; the run's own stays."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def _holder(path: Path) -> str:
    """' (pid N)' (' (pid N on HOST)' from another machine) as the lock's holder wrote it, or ''."""
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        return ""
    if not pid.isdigit():  # written just now and not yet filled in
        return ""
    if host and host != socket.gethostname():
        return f" (pid {pid} on {host})"
    if not process_alive(int(pid)):  # its child processes (data loading workers) still hold it, for seconds
        return f" (pid {pid}, which has ended; the processes it started still hold the lock: try again shortly)"
    return f" (pid {pid})"


def _lock(path: Path) -> int | None:
    """An open descriptor of `path` holding its exclusive flock, or None where flock is not
    supported; UserError when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{path.parent} is in use by another ldm train{_holder(path)}; wait for it to end, "
                            "or train into another --out") from None
        except OSError as e:
            os.close(fd)
            if e.errno in _NO_LOCKS:
                warnings.warn(f"{path.parent} cannot be locked ({e.strerror}): a second `ldm train` into it "
                              "would not be refused", stacklevel=3)
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # removed by the run that held it, between our open and our lock
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            _held.add(fd)
            return fd
        os.close(fd)


@contextlib.contextmanager
def locked_run_folder(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold RUN's lock for the block (creating RUN if needed); `enabled=False` (ranks other than
    0, or no fcntl): nothing. A folder made here and left empty (a run refused before it wrote
    anything) is removed again, so a refusal leaves no folder behind."""
    if not enabled or fcntl is None:
        yield
        return
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # the folder first, then its parents
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = None
    try:
        fd = _lock(path)
        if fd is not None:  # the lock says no other run writes here (a file system without locks: unknown)
            for folder in (run_dir, run_dir / "samples"):
                remove_temporary_files(folder)
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: after the close it could be another run's lock file
            _held.discard(fd)
            os.close(fd)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                break


@contextlib.contextmanager
def hold_run_lock(run_dir: Path, dist: DistInfo) -> Iterator[None]:
    """`locked_run_folder` on rank 0; under torchrun every rank refuses when rank 0 does (the
    others would otherwise go on alone into their first collective and wait there forever)."""
    with contextlib.ExitStack() as stack:
        failure = None
        try:
            stack.enter_context(locked_run_folder(run_dir, enabled=dist.is_main))
        except Exception as e:  # rank 0's; told to the others before it is raised
            failure = e
        told = broadcast_object(None if failure is None else str(failure), dist)
        if failure is not None:
            raise failure
        if told is not None:
            raise UserError(told)
        yield
