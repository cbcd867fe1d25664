"""A step's usage (CPU-seconds, peak memory, wall time, bytes read) and its estimated cost."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, Self

METADATA_KEYS: tuple[str, ...] = (
    "step_cpu_seconds",
    "step_peak_rss_bytes",
    "step_wall_seconds",
    "step_bytes_read",
    "step_cloud_run_usd",
    "step_bigquery_usd",
    "step_estimated_cost_usd",
)
"""Metadata keys of a step's usage. Prefixed because a checkpoint multi-asset reports the whole
step's usage on each family's materialization, beside that family's own `bytes_read`."""


@dataclass(frozen=True)
class Prices:
    """List prices in USD. Defaults: Cloud Run jobs (instance-based billing) in us-central1, a
    tier-1 region, free tier ignored: $0.000018 per vCPU-second and $0.000002 per GiB-second;
    BigQuery on-demand analysis in the US multi-region: $6.25 per TiB scanned."""

    vcpu_second: float = 0.000018
    gib_second: float = 0.000002
    bigquery_tib: float = 6.25


@dataclass(frozen=True)
class Container:
    """The Cloud Run job's container: it is billed for what it is allocated for the whole wall
    time, not for what the step used, so the estimate needs its size."""

    vcpus: float = 4.0
    memory_gib: float = 16.0


@dataclass(frozen=True)
class Usage:
    """What one step (or a sum of steps) used and what it is estimated to cost."""

    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    wall_seconds: float = 0.0
    bytes_read: int = 0
    cloud_run_usd: float = 0.0
    bigquery_usd: float = 0.0

    @property
    def estimated_cost_usd(self) -> float:
        return self.cloud_run_usd + self.bigquery_usd

    def __add__(self, other: Usage) -> Usage:
        # Steps of a pair run one after another, so wall times and costs add; memory does not.
        return Usage(
            cpu_seconds=self.cpu_seconds + other.cpu_seconds,
            peak_rss_bytes=max(self.peak_rss_bytes, other.peak_rss_bytes),
            wall_seconds=self.wall_seconds + other.wall_seconds,
            bytes_read=self.bytes_read + other.bytes_read,
            cloud_run_usd=self.cloud_run_usd + other.cloud_run_usd,
            bigquery_usd=self.bigquery_usd + other.bigquery_usd,
        )

    def to_metadata(self) -> dict[str, float | int]:
        """Plain values under METADATA_KEYS (the Dagster layer wraps them)."""
        return {
            "step_cpu_seconds": round(self.cpu_seconds, 3),
            "step_peak_rss_bytes": int(self.peak_rss_bytes),
            "step_wall_seconds": round(self.wall_seconds, 3),
            "step_bytes_read": int(self.bytes_read),
            "step_cloud_run_usd": round(self.cloud_run_usd, 6),
            "step_bigquery_usd": round(self.bigquery_usd, 6),
            "step_estimated_cost_usd": round(self.estimated_cost_usd, 6),
        }

    def to_dict(self) -> dict[str, float | int]:
        """Unprefixed values for reports and JSON."""
        out: dict[str, float | int] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["estimated_cost_usd"] = self.estimated_cost_usd
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Usage | None:
        """The usage recorded under METADATA_KEYS, or None if this event has none. Values may be
        plain numbers or objects with a `.value` (Dagster metadata values)."""

        def get(key: str) -> Any:
            value = metadata.get(key)
            return getattr(value, "value", value)

        if get("step_wall_seconds") is None:
            return None
        return cls(
            cpu_seconds=float(get("step_cpu_seconds") or 0.0),
            peak_rss_bytes=int(get("step_peak_rss_bytes") or 0),
            wall_seconds=float(get("step_wall_seconds") or 0.0),
            bytes_read=int(get("step_bytes_read") or 0),
            cloud_run_usd=float(get("step_cloud_run_usd") or 0.0),
            bigquery_usd=float(get("step_bigquery_usd") or 0.0),
        )


def estimate(
    wall_seconds: float,
    bytes_read: int,
    prices: Prices | None = None,
    container: Container | None = None,
) -> tuple[float, float]:
    """(Cloud Run USD, BigQuery USD) of a step that held `container` for `wall_seconds` and
    scanned `bytes_read` bytes."""
    prices = prices or Prices()
    container = container or Container()
    per_second = container.vcpus * prices.vcpu_second + container.memory_gib * prices.gib_second
    return wall_seconds * per_second, bytes_read / 2**40 * prices.bigquery_tib


def _cpu_seconds() -> float:
    # Children too: a step that runs work in subprocesses is billed for their CPU as well.
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_bytes() -> int:
    # ru_maxrss is the peak of the process's life (KiB on Linux). Each step of a multiprocess run
    # is its own process, so there it is the step's peak; in-process runs report the run's.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024


@dataclass
class StepUsage:
    """Measures a step: `with StepUsage() as usage: ...; usage.add_bytes_read(n)`, then
    `usage.metadata()` (or `start()` / `finish()`)."""

    prices: Prices = field(default_factory=Prices)
    container: Container = field(default_factory=Container)
    bytes_read: int = 0
    _started: float | None = None
    _cpu_start: float = 0.0
    _result: Usage | None = None

    def start(self) -> Self:
        self._started = time.perf_counter()
        self._cpu_start = _cpu_seconds()
        self._result = None
        return self

    def add_bytes_read(self, count: int) -> None:
        self.bytes_read += int(count)

    def finish(self) -> Usage:
        """The usage from `start()` to now (the first call fixes it)."""
        if self._result is not None:
            return self._result
        if self._started is None:
            raise RuntimeError("StepUsage.finish() before start()")
        wall = time.perf_counter() - self._started
        cloud_run, bigquery = estimate(wall, self.bytes_read, self.prices, self.container)
        self._result = Usage(
            cpu_seconds=max(0.0, _cpu_seconds() - self._cpu_start),
            peak_rss_bytes=_peak_rss_bytes(),
            wall_seconds=wall,
            bytes_read=self.bytes_read,
            cloud_run_usd=cloud_run,
            bigquery_usd=bigquery,
        )
        return self._result

    def metadata(self) -> dict[str, float | int]:
        return self.finish().to_metadata()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()


@dataclass(frozen=True)
class CostLine:
    """One row of a cost report: a pair (or `shared`) and the summed usage of its steps."""

    name: str
    steps: int
    usage: Usage

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, **self.usage.to_dict()}


def total(lines: Iterable[CostLine]) -> CostLine:
    summed = Usage()
    steps = 0
    for line in lines:
        summed = summed + line.usage
        steps += line.steps
    return CostLine("total", steps, summed)


def format_report(lines: Iterable[CostLine]) -> str:
    """A fixed-width table of the lines and their total."""
    lines = list(lines)
    header = (
        f"{'pair':10} {'steps':>5} {'cpu_s':>9} {'peak_GiB':>9} {'wall_s':>9} "
        f"{'read_MB':>10} {'cloud_run_$':>12} {'bigquery_$':>11} {'total_$':>10}"
    )
    rows = [header, "-" * len(header)]
    for line in [*lines, total(lines)]:
        u = line.usage
        rows.append(
            f"{line.name:10} {line.steps:>5} {u.cpu_seconds:>9.1f} "
            f"{u.peak_rss_bytes / 2**30:>9.2f} {u.wall_seconds:>9.1f} "
            f"{u.bytes_read / 1e6:>10.1f} {u.cloud_run_usd:>12.6f} {u.bigquery_usd:>11.6f} "
            f"{u.estimated_cost_usd:>10.6f}"
        )
    return "\n".join(rows)
