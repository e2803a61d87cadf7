"""`[fn(x) for x in items]` on a few threads, for work that releases the GIL (zlib's PNG encoding
and decoding): results in the items' order, the first failure in that order raised."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(fn: Callable[[T], R], items: Sequence[T], threads: int, name: str = "ldm") -> list[R]:
    """`fn` over `items` on up to `threads` threads; in the calling thread for one thread or item."""
    if threads <= 1 or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(fn, items))
