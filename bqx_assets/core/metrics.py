"""Wall time and peak memory of the current process, for reports and metadata."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field


def peak_rss_bytes(*, children: bool = False) -> int:
    """Peak resident set size of this process (or of its waited-for children), in bytes."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class Stopwatch:
    """Seconds since creation."""

    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
