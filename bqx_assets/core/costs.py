"""A step's usage (CPU-seconds, peak memory, wall time, bytes read) and its estimated cost."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, Literal, Self

from bqx_assets.core.metrics import FOOTPRINT_KEYS, PeakRss, peak_rss_bytes

METADATA_KEYS: tuple[str, ...] = (
    "step_cpu_seconds",
    "step_peak_rss_bytes",
    "step_wall_seconds",
    "step_bytes_read",
    "step_query_bytes_billed",
    "step_cloud_run_usd",
    "step_bigquery_usd",
    "step_estimated_cost_usd",
)
"""Metadata keys of a step's usage. Prefixed because a checkpoint multi-asset reports the whole
step's usage on each family's materialization, beside that family's own `bytes_read`."""


STORAGE_READ_PRICING_URL = "https://cloud.google.com/bigquery/pricing#data_extraction_pricing"
"""Google's BigQuery pricing page, "Data extraction pricing": the Storage Read API's price."""
QUERY_PRICING_URL = "https://cloud.google.com/bigquery/pricing#on_demand_pricing"
"""The same page, "On-demand compute pricing": queries billed per TiB, at least 10 MB a table
referenced (INFORMATION_SCHEMA.PARTITIONS look-ups are such queries)."""


@dataclass(frozen=True)
class Prices:
    """List prices in USD. Cloud Run jobs (instance-based billing) in us-central1, a tier-1
    region, free tier ignored: $0.000018 per vCPU-second and $0.000002 per GiB-second.

    Bytes read are Storage Read API bytes, which BigQuery prices on their own ("Data extraction
    pricing", STORAGE_READ_PRICING_URL), not at the on-demand query rate ($6.25 per TiB scanned):
    on-demand, $1.10 per TiB read in the US multi-region. Export mode reads nothing billable (an
    extract job is free). The step's metadata queries (partition look-ups) are billed as
    queries: their `total_bytes_billed` at the on-demand rate (QUERY_PRICING_URL)."""

    vcpu_second: float = 0.000018
    gib_second: float = 0.000002
    storage_read_tib: float = 1.10
    query_tib: float = 6.25
    storage_read_free_tib_per_month: float = 300.0
    """The free Storage Read allowance per billing account and month. Not subtracted by the
    estimates: a step cannot know the month's total; at ~12 GB per pair, a whole backfill of
    28 pairs stays far inside it, so the BigQuery figures are the list price before it."""


@dataclass(frozen=True)
class Container:
    """The Cloud Run job's container: it is billed for what it is allocated for the whole wall
    time, not for what the step used, so the estimate needs its size. The default is the job's
    size in deploy/ (2 vCPU, 4 GiB: the streaming merge stays under 1 GiB)."""

    vcpus: float = 2.0
    memory_gib: float = 4.0


JOB = Container()
"""The Cloud Run job's size, defined here only: deploy/README.md's `gcloud run jobs create --cpu
--memory` must say the same (bqx_assets_tests/test_deploy.py), `bqx costs` prices runs at it, and
the production rehearsal (bqx_assets_tests/e2e/test_production.py) holds each run to its memory.
"""


@dataclass(frozen=True)
class Usage:
    """What one step (or a sum of steps) used and what it is estimated to cost."""

    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    wall_seconds: float = 0.0
    bytes_read: int = 0
    cloud_run_usd: float = 0.0
    bigquery_usd: float = 0.0
    """Storage Read bytes at the read price, plus the queries' billed bytes at the query rate."""
    query_bytes_billed: int = 0
    """Bytes BigQuery billed the step's queries (its partition look-ups), as billed."""

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
            query_bytes_billed=self.query_bytes_billed + other.query_bytes_billed,
            cloud_run_usd=self.cloud_run_usd + other.cloud_run_usd,
            bigquery_usd=self.bigquery_usd + other.bigquery_usd,
        )

    def priced(self, prices: Prices | None = None, container: Container | None = None) -> Usage:
        """The same usage with its costs estimated at `prices` for `container` (a report may
        price recorded runs differently from how they were priced when they ran)."""
        cloud_run, bigquery = estimate(
            self.wall_seconds, self.bytes_read, prices, container, self.query_bytes_billed
        )
        return replace(self, cloud_run_usd=cloud_run, bigquery_usd=bigquery)

    def to_metadata(self) -> dict[str, float | int]:
        """Plain values under METADATA_KEYS (the Dagster layer wraps them)."""
        return {
            "step_cpu_seconds": round(self.cpu_seconds, 3),
            "step_peak_rss_bytes": int(self.peak_rss_bytes),
            "step_wall_seconds": round(self.wall_seconds, 3),
            "step_bytes_read": int(self.bytes_read),
            "step_query_bytes_billed": int(self.query_bytes_billed),
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
            query_bytes_billed=int(get("step_query_bytes_billed") or 0),
            cloud_run_usd=float(get("step_cloud_run_usd") or 0.0),
            bigquery_usd=float(get("step_bigquery_usd") or 0.0),
        )


def estimate(
    wall_seconds: float,
    bytes_read: int,
    prices: Prices | None = None,
    container: Container | None = None,
    query_bytes_billed: int = 0,
) -> tuple[float, float]:
    """(Cloud Run USD, BigQuery USD) of a step that held `container` for `wall_seconds`, read
    `bytes_read` bytes through the Storage Read API and was billed `query_bytes_billed` for
    its queries."""
    prices = prices or Prices()
    container = container or JOB
    per_second = container.vcpus * prices.vcpu_second + container.memory_gib * prices.gib_second
    bigquery = (
        bytes_read * prices.storage_read_tib + query_bytes_billed * prices.query_tib
    ) / 2**40
    return wall_seconds * per_second, bigquery


def _cpu_seconds() -> float:
    # Children too: a step that runs work in subprocesses is billed for their CPU as well.
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class StepUsage:
    """Measures a step: `with StepUsage() as usage: ...; usage.add_bytes_read(n)`, then
    `usage.metadata()` (or `start()` / `finish()`).

    Its peak memory is the step's own (`metrics.PeakRss`: the process's high-water mark reset
    at the start where Linux allows it), so steps run one after another in one process, as
    under `bqx demo`, each report theirs. Children's peaks count when they rose during the
    step (the kernel keeps only the largest child's peak, which no process can reset)."""

    prices: Prices = field(default_factory=Prices)
    container: Container = field(default_factory=Container)
    bytes_read: int = 0
    query_bytes_billed: int = 0
    _started: float | None = None
    _cpu_start: float = 0.0
    _children_peak: int = 0
    _peak: PeakRss = field(default_factory=PeakRss, repr=False, compare=False)
    _result: Usage | None = None

    def start(self) -> Self:
        self._started = time.perf_counter()
        self._cpu_start = _cpu_seconds()
        self._children_peak = peak_rss_bytes(children=True)
        self._peak = PeakRss().start()
        self._result = None
        return self

    @property
    def own_peak(self) -> bool:
        """Whether the peak is the step's own, not the process's whole-life peak (where
        Linux refused the reset; there each step should run in a process of its own)."""
        return self._peak.own

    def _peak_rss_bytes(self) -> int:
        children = peak_rss_bytes(children=True)
        return max(self._peak.stop(), children if children > self._children_peak else 0)

    def add_bytes_read(self, count: int) -> None:
        self.bytes_read += int(count)

    def add_query_bytes_billed(self, count: int) -> None:
        self.query_bytes_billed += int(count)

    def finish(self) -> Usage:
        """The usage from `start()` to now (the first call fixes it)."""
        if self._result is not None:
            return self._result
        if self._started is None:
            raise RuntimeError("StepUsage.finish() before start()")
        wall = time.perf_counter() - self._started
        cloud_run, bigquery = estimate(
            wall, self.bytes_read, self.prices, self.container, self.query_bytes_billed
        )
        self._result = Usage(
            cpu_seconds=max(0.0, _cpu_seconds() - self._cpu_start),
            peak_rss_bytes=self._peak_rss_bytes(),
            wall_seconds=wall,
            bytes_read=self.bytes_read,
            query_bytes_billed=self.query_bytes_billed,
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


def footprint(metadata: Mapping[str, Any]) -> dict[str, float]:
    """A step's footprint as recorded under metrics.FOOTPRINT_KEYS (peak local bytes, RSS +
    local bytes); keys it did not record are left out."""
    found: dict[str, float] = {}
    for key in FOOTPRINT_KEYS:
        value = metadata.get(key)
        value = getattr(value, "value", value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = value
    return found


def largest(*footprints: Mapping[str, float]) -> dict[str, float]:
    """The largest value per key: footprints are peaks, which steps run one after another do
    not add."""
    out: dict[str, float] = {}
    for each in footprints:
        for key, value in each.items():
            out[key] = max(out.get(key, value), value)
    return out


@dataclass(frozen=True)
class Chunks:
    """Chunks a run's checkpoint steps extracted, reused and compacted (their metadata)."""

    extracted: int = 0
    reused: int = 0
    compacted: int = 0

    def __add__(self, other: Chunks) -> Chunks:
        return Chunks(
            self.extracted + other.extracted,
            self.reused + other.reused,
            self.compacted + other.compacted,
        )

    @property
    def full(self) -> bool:
        """Every chunk was read from the warehouse: a build from scratch."""
        return self.extracted > 0 and self.reused == 0 and self.compacted == 0


Build = Literal["full", "first", "refresh", "-"]
"""What a run was: "full" (every chunk extracted), "first" (a pair's first build, which reused
chunks another pair wrote: shared cov tables), "refresh" (chunks reused), "-" (no chunk
counts recorded: runs of steps that report none)."""


def build_of(chunks: Chunks, *, reference: bool = False) -> Build:
    """What a run was from its chunk counts; `reference`: the run a report compares others to
    (a full build, else the first)."""
    if chunks == Chunks():
        return "-"
    if chunks.full:
        return "full"
    if reference:
        return "first"
    return "refresh" if chunks.reused or chunks.compacted else "-"


@dataclass(frozen=True)
class CostLine:
    """One row of a cost report: a pair (or `shared`), the summed usage of one run's steps and
    the largest footprint any of them recorded; which build it was (`build`), whether it is
    the latest run (`latest`) and whether it is the full build the latest is compared with
    (`full`: the latest full build, else the first build; a line may be both)."""

    name: str
    steps: int
    usage: Usage
    footprint: Mapping[str, float] = field(default_factory=dict)
    build: Build = "-"
    latest: bool = True
    full: bool = False
    chunks: Chunks = field(default_factory=Chunks)
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "build": self.build,
            "latest": self.latest,
            "full": self.full,
            "run_id": self.run_id,
            "steps": self.steps,
            "chunks_extracted": self.chunks.extracted,
            "chunks_reused": self.chunks.reused,
            "chunks_compacted": self.chunks.compacted,
            **self.usage.to_dict(),
            **self.footprint,
        }


def total(lines: Iterable[CostLine], name: str = "total") -> CostLine:
    summed = Usage()
    steps = 0
    chunks = Chunks()
    peaks: dict[str, float] = {}
    for line in lines:
        summed = summed + line.usage
        steps += line.steps
        chunks = chunks + line.chunks
        peaks = largest(peaks, line.footprint)
    return CostLine(name, steps, summed, peaks, chunks=chunks)


def totals(lines: Iterable[CostLine]) -> list[CostLine]:
    """The total of the latest runs, then, when some pair's full build is another run than its
    latest, the total of the full builds beside it."""
    lines = list(lines)
    out = [total([line for line in lines if line.latest])]
    if not all(line.latest for line in lines):
        out.append(total([line for line in lines if line.full], "total full"))
    return out


def format_report(lines: Iterable[CostLine]) -> str:
    """A fixed-width table of the lines and their totals (footprint columns when recorded):
    per pair its latest run and, when that is not one, its full build below it."""
    lines = list(lines)
    extra = sorted({key for line in lines for key in line.footprint})
    header = (
        f"{'pair':10} {'build':>7} {'steps':>5} {'cpu_s':>9} {'peak_GiB':>9} {'wall_s':>9} "
        f"{'read_MB':>10} {'chunks_x':>8} {'chunks_r':>8} {'cloud_run_$':>12} "
        f"{'bigquery_$':>11} {'total_$':>10}"
    ) + "".join(f" {_column(key):>{_width(key)}}" for key in extra)
    rows = [header, "-" * len(header)]
    for line in [*lines, *totals(lines)]:
        u = line.usage
        build = "" if line.name.startswith("total") else line.build
        rows.append(
            f"{line.name:10} {build:>7} {line.steps:>5} {u.cpu_seconds:>9.1f} "
            f"{u.peak_rss_bytes / 2**30:>9.2f} {u.wall_seconds:>9.1f} "
            f"{u.bytes_read / 1e6:>10.1f} {line.chunks.extracted:>8} "
            f"{line.chunks.reused + line.chunks.compacted:>8} {u.cloud_run_usd:>12.6f} "
            f"{u.bigquery_usd:>11.6f} {u.estimated_cost_usd:>10.6f}"
            + "".join(f" {_cell(key, line.footprint.get(key)):>{_width(key)}}" for key in extra)
        )
    return "\n".join(rows)


def _column(key: str) -> str:
    name = key.removeprefix("step_")
    return f"{name.removesuffix('_bytes')}_GiB" if name.endswith("_bytes") else name


def _width(key: str) -> int:
    return max(10, len(_column(key)))


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**30:.2f}" if key.endswith("_bytes") else f"{value:g}"
