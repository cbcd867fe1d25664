"""Returning freed C-heap memory to the system, so RSS follows what is in use."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from pathlib import Path


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's `malloc_trim`; elsewhere a
    no-op). Tables read and written on several threads leave their freed Arrow and numpy
    buffers in glibc's per-thread arenas, whose RSS then creeps up run-long: a full-length
    shared extraction (411 tables, 4 threads) peaked at 1.99 GiB with reads holding ~0.8 GiB."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


TRIM_GROWTH_BYTES = 64 * 2**20
"""RSS above its lowest level since the last trim that makes `MemoryReturn` trim after a
table. A trim walks every arena (~2.4 ms at a refresh's heap size, 1.6 s over 668 tables)
while a refresh's table reads a day or two and frees a few MB, which the next table reuses."""
_STATM = Path("/proc/self/statm")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    """This process's resident set size now (Linux), else None."""
    try:
        return int(_STATM.read_bytes().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


class MemoryReturn:
    """`release_free_memory` after a table only when the process's RSS has grown by
    TRIM_GROWTH_BYTES above the lowest seen since the last trim (or always, where RSS cannot be
    read): tables that read little cost no trim, while freed memory never stays held above
    that margin once a table is done. Thread-safe."""

    def __init__(self, growth: int = TRIM_GROWTH_BYTES) -> None:
        self.growth = growth
        self.trims = 0
        self._lock = threading.Lock()
        self._low = _rss_bytes()

    def after_table(self) -> None:
        rss = _rss_bytes()
        with self._lock:
            if rss is not None and self._low is not None:
                self._low = min(self._low, rss)
                if rss - self._low < self.growth:
                    return
            release_free_memory()
            self.trims += 1
            self._low = _rss_bytes()
