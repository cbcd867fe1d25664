"""Wall time, peak memory and local bytes held by the current process, for reports and metadata."""

from __future__ import annotations

import os
import resource
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"
"""Written to /proc/self/clear_refs, resets the process's VmHWM to its current RSS (Linux 4.0+;
proc(5)). It changes nothing else: 1-4 would clear page bits that reclaim uses."""

_peak_lock = threading.Lock()
_peak_before_resets = 0
"""The highest VmHWM this process had before any of its resets: `peak_rss_bytes` stays the
process's whole-life peak whatever `PeakRss` reset."""


def _vm_status() -> tuple[int, int] | None:
    """(VmHWM, VmRSS) of this process in bytes, or None where /proc does not give them."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            name, value = line.split(":", 1)
            found[name] = int(value.split()[0]) * 1024  # kB
    if len(found) < 2:
        return None
    return found["VmHWM"], found["VmRSS"]


def peak_rss_bytes(*, children: bool = False) -> int:
    """Peak resident set size of this process over its whole life (or of its waited-for
    children), in bytes."""
    if not children and (status := _vm_status()) is not None:
        # Linux carries a parent's high-water mark in ru_maxrss across fork and exec, so a step
        # process started by a large one would report the parent's peak; VmHWM is this process's.
        return max(status[0], _peak_before_resets)
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its RSS now; whether it was (a read-only /proc, an older
    kernel or a sandbox such as gVisor may refuse or ignore the write). Called under the lock."""
    global _peak_before_resets
    before = _vm_status()
    if before is None:
        return False
    try:
        with _CLEAR_REFS.open("w") as f:
            f.write(_RESET_PEAK)
    except OSError:
        return False
    after = _vm_status()
    if after is None:
        return False
    _peak_before_resets = max(_peak_before_resets, before[0])
    # Reset, the mark is the RSS of the moment (give or take what another thread touched
    # since); ignored, it is still the earlier, higher peak.
    return after[0] < before[0] or after[0] <= after[1]


class PeakRss:
    """The peak RSS of this process while a step runs: `with PeakRss() as peak: ...;
    peak.bytes`. Where Linux lets a process reset its high-water mark (`own` True), the peak
    from the start, so steps run one after another in one process (`bqx demo`, the in-process
    executor) each report their own; elsewhere the process's whole-life peak, which is the
    step's where each step is a process of its own (the multiprocess executor, Cloud Run).

    Windows may overlap (a step measured inside another): a reset first folds the peak so far
    into every open window, so none reports less than it held."""

    _open: ClassVar[weakref.WeakSet[PeakRss]] = weakref.WeakSet()
    """Windows started and not stopped (a step that failed drops its own with it)."""

    def __init__(self) -> None:
        self.own = False
        self._floor = 0
        self._bytes: int | None = None

    def start(self) -> Self:
        with _peak_lock:
            status = _vm_status()
            if status is not None:
                for window in PeakRss._open:
                    window._floor = max(window._floor, status[0])
            self.own = _reset_peak()
            self._floor = 0
            self._bytes = None
            PeakRss._open.add(self)
        return self

    def stop(self) -> int:
        """The peak from start to now (the first call fixes it)."""
        with _peak_lock:
            if self._bytes is None:
                PeakRss._open.discard(self)
                self._bytes = self._peak()
        return self._bytes

    @property
    def bytes(self) -> int:
        """The peak so far (fixed once stopped)."""
        return self._bytes if self._bytes is not None else self._peak()

    def _peak(self) -> int:
        status = _vm_status() if self.own else None
        return max(self._floor, status[0] if status is not None else peak_rss_bytes())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Stopwatch:
    """Seconds since creation."""

    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


STEP_PEAK_LOCAL_BYTES = "step_peak_local_bytes"
"""Metadata key: the most bytes a step added under its local folders (work, caches, TMPDIR) at
any moment. On Cloud Run the container's filesystem is memory, so these bytes count against the
memory limit like RSS does."""

STEP_FOOTPRINT_BYTES = "step_footprint_bytes"
"""Metadata key: `step_peak_rss_bytes` + `step_peak_local_bytes`, what a container running the
step must hold (an upper bound: the two peaks need not coincide)."""

FOOTPRINT_KEYS: tuple[str, ...] = (STEP_PEAK_LOCAL_BYTES, STEP_FOOTPRINT_BYTES)

LOCAL_SAMPLE_SECONDS = 0.1
"""How often local folders are measured, at most; a file that lives for less may be missed."""
WALK_SHARE = 10
"""The sampler waits at least this many times as long as its last walk of the folders took."""


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (symlinks not followed; files that vanish
    while it is walked are skipped)."""
    total = 0
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _outermost(folders: Iterable[Path | str]) -> list[Path]:
    resolved = sorted({Path(f).expanduser().resolve() for f in folders}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for folder in resolved:
        if not any(folder.is_relative_to(k) for k in kept):
            kept.append(folder)
    return kept


class LocalBytes:
    """The peak of bytes held under some local folders while a step runs, above what was there
    when it started, sampled by a background thread every LOCAL_SAMPLE_SECONDS:
    `with LocalBytes([workdir, cache, tempfile.gettempdir()]) as local: ...; local.peak`."""

    def __init__(self, folders: Iterable[Path | str], interval: float = LOCAL_SAMPLE_SECONDS):
        self.folders = _outermost(folders)
        self.interval = interval
        self.peak = 0
        self._baseline = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now(self) -> int:
        return sum(folder_bytes(f) for f in self.folders)

    def sample(self) -> int:
        """Measure now (also called by the thread); returns the bytes above the baseline."""
        held = max(0, self._now() - self._baseline)
        self.peak = max(self.peak, held)
        return held

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            watch = Stopwatch()
            self.sample()
            # A folder shared with other processes (a developer's /tmp with thousands of
            # files) makes a walk slow: waiting ten walks' time keeps the sampler under a tenth
            # of a core, whatever the folders hold.
            wait = max(self.interval, WALK_SHARE * watch.seconds)

    def start(self) -> Self:
        self._baseline = self._now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="local-bytes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (a last sample first); returns the peak."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()
        return self.peak

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def footprint_metadata(peak_rss: int, peak_local: int) -> dict[str, int]:
    """Plain values under FOOTPRINT_KEYS (the Dagster layer wraps them)."""
    return {
        STEP_PEAK_LOCAL_BYTES: int(peak_local),
        STEP_FOOTPRINT_BYTES: int(peak_rss + peak_local),
    }
