"""Step measurements: the local bytes a step holds at its peak, above what was there before; a
step's own peak memory in a process that runs several."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bqx_assets.core import metrics
from bqx_assets.core.metrics import (
    STEP_FOOTPRINT_BYTES,
    STEP_PEAK_LOCAL_BYTES,
    LocalBytes,
    PeakRss,
    folder_bytes,
    footprint_metadata,
    peak_rss_bytes,
)
from bqx_assets_tests.builders import hold_memory

MiB = 2**20


def test_peak_local_bytes_counts_a_file_that_came_and_went(tmp_path: Path) -> None:
    work, cache = tmp_path / "work", tmp_path / "work" / "cache"
    cache.mkdir(parents=True)
    (cache / "before.bin").write_bytes(b"x" * 2_000_000)  # there before: not the step's
    with LocalBytes([work, cache, tmp_path / "absent"], interval=0.01) as local:
        scratch = work / "nested" / "scratch.bin"
        scratch.parent.mkdir()
        scratch.write_bytes(b"y" * 3_000_000)
        time.sleep(0.2)
        scratch.unlink()
    assert local.peak == 3_000_000  # nested folders counted once, the earlier file not at all
    assert folder_bytes(work) == 2_000_000


def test_footprint_is_peak_rss_plus_peak_local_bytes() -> None:
    assert footprint_metadata(5, 7) == {STEP_PEAK_LOCAL_BYTES: 7, STEP_FOOTPRINT_BYTES: 12}


def test_peak_rss_is_this_process_own_not_its_parents() -> None:
    """A child started by a process that once held 400 MB reports its own, smaller peak."""
    import subprocess
    import sys

    code = (
        "import subprocess, sys\n"
        "ballast = bytearray(400 * 2**20)\n"
        "child = 'from bqx_assets.core.metrics import peak_rss_bytes; print(peak_rss_bytes())'\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True,"
        " check=True).stdout)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout.split()[-1]) < 300 * 2**20


def test_a_slow_walk_of_the_folders_makes_the_sampler_wait_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared folder that takes long to walk (a developer's /tmp) costs the step a bounded
    share of a core: the sampler waits ten walks' time between walks."""
    walks: list[float] = []

    def slow_walk(self: LocalBytes) -> int:
        walks.append(time.perf_counter())
        time.sleep(0.02)
        return 0

    monkeypatch.setattr(LocalBytes, "_now", slow_walk)
    with LocalBytes([tmp_path], interval=0.01):
        time.sleep(1.0)
    # 0.02 s walks every 0.01 s would be ~33 walks; waiting 10 x 0.02 s between them, ~5.
    assert 3 <= len(walks) <= 10, len(walks)


def test_a_window_reports_the_peak_since_its_start_and_the_process_keeps_its_whole_life_peak() -> (
    None
):
    with PeakRss() as large:
        hold_memory(300 * MiB)
    with PeakRss() as small:
        hold_memory(30 * MiB)
    if not (large.own and small.own):
        pytest.skip("this kernel refuses to reset the peak (/proc/self/clear_refs)")
    # Without the reset both would be the process's peak, the same figure.
    assert large.bytes - small.bytes > 200 * MiB
    assert peak_rss_bytes() >= large.bytes  # what `bqx demo` prints last is the whole run's


def test_a_window_started_inside_another_hides_none_of_the_outer_windows_peak() -> None:
    with PeakRss() as outer:
        hold_memory(200 * MiB)
        with PeakRss() as inner:
            hold_memory(20 * MiB)
    if not inner.own:
        pytest.skip("this kernel refuses to reset the peak (/proc/self/clear_refs)")
    assert outer.bytes - inner.bytes > 150 * MiB
    assert outer.stop() == outer.bytes  # fixed once stopped


def test_where_the_reset_is_refused_a_window_reports_the_process_whole_life_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only /proc (a hardened container) or a sandbox without clear_refs: no error, the
    process's peak, the step's own where each step is a process of its own."""
    monkeypatch.setattr(metrics, "_CLEAR_REFS", tmp_path)  # a folder: the write fails
    before = peak_rss_bytes()
    with PeakRss() as peak:
        hold_memory(10 * MiB)
    assert not peak.own
    assert before <= peak.bytes <= peak_rss_bytes()
