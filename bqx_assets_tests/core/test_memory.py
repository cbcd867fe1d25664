"""Freed C-heap memory handed back to the system, after a table only once RSS has grown."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from bqx_assets.core import memory


def test_free_memory_is_handed_back_only_once_rss_has_grown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rss = iter([100, 100, 150, 120, 170, 100, 90, 95, 140, 200, 100]).__next__
    trims: list[int] = []
    monkeypatch.setattr(memory, "_rss_bytes", rss)
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1))
    memory_return = memory.MemoryReturn(growth=50)  # lowest RSS seen: 100
    for _ in range(4):
        memory_return.after_table()  # 100, 150 (+50: trim, then 120), 170 (+50: trim, then 100), 90
    assert memory_return.trims == 2
    memory_return.after_table()  # 95: lowest 90
    memory_return.after_table()  # 140 (+50 over the lowest since the last trim: trim, then 200)
    assert memory_return.trims == 3
    memory_return.after_table()  # 100: lower than the 200 read after the trim
    assert len(trims) == 3


def test_free_memory_is_handed_back_after_every_table_without_an_rss_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "_rss_bytes", lambda: None)
    trims: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1))
    memory_return = memory.MemoryReturn()
    for _ in range(3):
        memory_return.after_table()
    assert len(trims) == 3 == memory_return.trims


def test_tables_finishing_on_many_threads_are_counted_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "_rss_bytes", lambda: None)
    trims: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1))
    memory_return = memory.MemoryReturn()
    threads = [
        threading.Thread(target=lambda: [memory_return.after_table() for _ in range(50)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert memory_return.trims == len(trims) == 400


@pytest.mark.skipif(sys.platform != "linux", reason="RSS is read from /proc (Linux)")
def test_freed_heap_memory_goes_back_to_the_system() -> None:
    if memory._MALLOC_TRIM is None:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    # 80 MB of small buffers (below malloc's mmap threshold: in the heap), then one kept above
    # them, so that freeing them leaves the memory free inside the heap where free() alone does
    # not hand it back.
    held = [bytearray(4096) for _ in range(20_000)]
    kept = bytearray(4096)
    del held
    gc.collect()
    before = memory._rss_bytes()
    memory.release_free_memory()
    after = memory._rss_bytes()
    assert before is not None and after is not None
    assert before - after > 40 * 2**20, (before, after)
    assert kept
