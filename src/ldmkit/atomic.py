"""Atomic file replacement: a reader (or a crash) sees the old file or the whole new one.

The new bytes go to a temporary file in the same folder (a rename across file systems is a
copy, not atomic), are flushed and fsync'ed, and only then `os.replace` swaps the name over
(atomic on POSIX and Windows). The folder is fsync'ed afterwards so the rename survives a
power cut. Used for checkpoints, model files and images alike.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import uuid
from pathlib import Path
from typing import IO, Callable


def fsync_directory(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The mode `open()` gives a new file here: 0o666 less the umask. Read from /proc where it
    is there (os.umask can only be read by setting it, which races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# What `atomic_save` writes before its swap: .NAME.HOST.PID.RANDOM.tmp (the host: a pid says
# whether its writer lives only on the machine that wrote it, e.g. not on a shared file system).
TEMPORARY_NAME = re.compile(r"\..+\.([A-Za-z0-9-]+)\.(\d+)\.[0-9a-f]{8}\.tmp")
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine lives (another user's too); True where unsure."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process; a number no pid can be
        return True
    return True


def _writer_ended(host: str, pid: str) -> bool:
    # another machine's writer: nothing here says whether it lives
    return host == _HOST and not process_alive(int(pid))


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the temporary files `atomic_save` left in `folder` whose writing process has ended
    (killed mid-save: a partial checkpoint of up to gigabytes that nothing else would remove; a
    live writer's are left alone). Returns what it removed."""
    removed = []
    for path in folder.glob(".*.tmp"):
        named = TEMPORARY_NAME.fullmatch(path.name)
        if named and _writer_ended(*named.groups()) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def atomic_save(path: str | os.PathLike, write_path: Callable[[Path], None]) -> Path:
    """Replace `path` by what `write_path(tmp)` writes to a temporary path beside it.

    For writers that want a file name (e.g. `safetensors.torch.save_file`). The temporary file
    is removed if anything fails before the swap. Returns the final path.
    """
    def written_and_synced(tmp: Path) -> None:
        write_path(tmp)
        # The usual mode, as `open` would give: safetensors' save_file makes its files 0600
        # (private to this user, so a server account could not read a converted model).
        os.chmod(tmp, _new_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    return _swap_in(Path(path), written_and_synced)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Replace `path` by what `write(file)` writes to an open binary file (see `atomic_save`)."""
    def written_and_synced(tmp: Path) -> None:
        with open(tmp, "xb") as f:  # made with the usual mode; synced through this handle (no second open)
            write(f)
            f.flush()
            os.fsync(f.fileno())

    return _swap_in(Path(path), written_and_synced)


def _swap_in(path: Path, write_synced: Callable[[Path], None]) -> Path:
    """`write_synced(tmp)` writes and fsyncs the temporary file; then the rename over `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # the folder's name is taken by a file: say that, not "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # TEMPORARY_NAME
    try:
        write_synced(tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # a read-only place refuses this too: the first error is the one
            tmp.unlink(missing_ok=True)
        # Named by the file the caller asked for: not the temporary one, and not nothing (a full disk
        # said "No space left on device" without a file).
        if err.errno is not None and err.filename in (str(tmp), tmp, None):
            raise type(err)(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` by `text` in UTF-8 (JSON reports, configs, tokenizer files)."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file` through `atomic_save`; its I/O failures (a `SafetensorError`,
    not an `OSError`) come out as `OSError`s naming `path`, which `ldm` prints as one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as err:
            raise OSError(errno.EIO, f"could not write the safetensors file ({err})", str(path)) from None

    return atomic_save(path, write)
