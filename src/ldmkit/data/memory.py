"""Will an in-memory dataset fit? Asked before loading one, so that a large `--image-size`
stops with one line instead of the kernel's OOM killer (exit 137, no message at all).

The built-in datasets are stored whole as uint8 `[N, C, S, S]`: N x C x S x S bytes, which
grows with the square of the size (the emoji set is 22 MB at 64 px, 5.4 GB at 1000 px).
What the process may still allocate is the least of what is known on this machine: the
kernel's MemAvailable (or free pages where there is no /proc), a cgroup v2 memory limit (a
container's: exceeding it is a kill), an address-space limit (`ulimit -v`: exceeding it is a
failed allocation). Where none can be read nothing is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ldmkit.errors import UserError

_CGROUP = Path("/sys/fs/cgroup")


def _read_kib(path: Path, key: str) -> int | None:
    """`key:   123 kB` from a /proc file, in bytes."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _system_available() -> int | None:
    """MemAvailable (free plus reclaimable cache); else free pages, where sysconf knows them."""
    available = _read_kib(Path("/proc/meminfo"), "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not on this OS (macOS has no SC_AVPHYS_PAGES)
        return None


def _cgroup_headroom() -> int | None:
    """memory.max less what the cgroup uses, not counting its page cache (the kernel drops
    that before it kills); None without a cgroup v2 limit."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((_CGROUP / "memory.current").read_text())
        stat = dict(line.split() for line in (_CGROUP / "memory.stat").read_text().splitlines())
        return int(limit) - used + int(stat.get("file", 0))
    except (OSError, ValueError):
        return None


def _address_space_headroom() -> int | None:
    """RLIMIT_AS less the address space already mapped; None when unlimited or unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    mapped = _read_kib(Path("/proc/self/status"), "VmSize")
    return limit - (mapped or 0)


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as can be known; None when unknown."""
    known = [value for value in (_system_available(), _cgroup_headroom(), _address_space_headroom())
             if value is not None]
    return min(known) if known else None


def _size_text(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def processes_on_this_machine() -> int:
    """How many processes of this job load their own copy of the data here: torchrun's
    LOCAL_WORLD_SIZE (one process per GPU), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_fits_in_memory(what: str, count: int, channels: int, image_size: int, *,
                         working_bytes: int = 0, advice: str = "a smaller --image-size or fewer images") -> None:
    """UserError, before any loading, if `count` uint8 images of `channels` x `image_size`^2
    (plus `working_bytes` of scratch space while loading) would not fit in memory, once for each
    process of the job on this machine (under torchrun each rank holds its own copy; counted
    against the tightest limit, so a per-process `ulimit -v` is counted as if shared)."""
    stored = count * channels * image_size * image_size
    copies = processes_on_this_machine()
    available = available_memory()
    if available is None or (stored + working_bytes) * copies <= available:
        return
    held = f"{_size_text(stored)} of memory" + (f" in each of the {copies} processes on this machine" if copies > 1
                                                else "")
    raise UserError(f"{what} at {image_size} px would take {held} ({count} images of "
                    f"{channels}x{image_size}x{image_size} bytes), more than the {_size_text(max(available, 0))} "
                    f"available here: use {advice}" + (" or fewer processes per machine" if copies > 1 else "")
                    + ".")
