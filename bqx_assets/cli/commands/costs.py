"""`bqx costs`: CPU, memory, wall time, bytes read and estimated cost of each pair's latest run,
beside those of its latest full build."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.core.costs import (
    STORAGE_READ_PRICING_URL,
    Chunks,
    Container,
    CostLine,
    Prices,
    Usage,
    build_of,
    footprint,
    format_report,
    largest,
    totals,
)

if TYPE_CHECKING:
    import dagster as dg

SHARED = "shared"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "costs",
        help="sum CPU, memory, time, bytes read and estimated cost of the latest pair runs",
        description=(
            "Reads the Dagster instance (DAGSTER_HOME, default: the current folder): for each "
            "pair, the run of its latest training file, and the run of the latest shared "
            "checkpoints; sums each run's steps and prices them as Cloud Run job time of the "
            "given container plus Storage Read API bytes read. Where the latest run reused "
            "chunks (a refresh), the pair's latest full build (every chunk extracted; else its "
            "first build) is shown below it, and a total of those. Steps without recorded usage "
            "are measured from Dagster's step statistics (CPU unknown: 0)."
        ),
    )
    parser.add_argument("--pairs", default=None, help="comma-separated pairs (default: all built)")
    parser.add_argument("--no-shared", action="store_true", help="leave the shared run out")
    defaults, size = Prices(), Container()
    parser.add_argument("--vcpu-second", type=float, default=defaults.vcpu_second)
    parser.add_argument("--gib-second", type=float, default=defaults.gib_second)
    parser.add_argument(
        "--storage-read-tib",
        type=float,
        default=defaults.storage_read_tib,
        help=f"USD per TiB read through the Storage Read API ({STORAGE_READ_PRICING_URL})",
    )
    parser.add_argument("--vcpus", type=float, default=size.vcpus, help="run container vCPUs")
    parser.add_argument("--memory-gib", type=float, default=size.memory_gib)
    parser.set_defaults(handler=_costs)


def _number(value: Any) -> float | None:
    value = getattr(value, "value", value)
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class RunUsage:
    """One run: its steps, their summed usage, the largest footprint and the chunk counts of
    its checkpoint steps."""

    run_id: str
    steps: int
    usage: Usage
    peaks: dict[str, float] = field(default_factory=dict)
    chunks: Chunks = field(default_factory=Chunks)

    def line(self, name: str, **kind: Any) -> CostLine:
        return CostLine(
            name, self.steps, self.usage, self.peaks, chunks=self.chunks, run_id=self.run_id, **kind
        )


def run_usage(
    instance: dg.DagsterInstance, run_id: str, prices: Prices, container: Container
) -> RunUsage:
    """One run's steps, summed usage priced with `prices` for `container`, largest footprint
    and chunk counts, from Dagster's step statistics: each step's recorded usage, or where a
    step recorded none, its wall time and the `bytes_read` and peak memory its
    materializations report."""
    summed = Usage()
    chunks = Chunks()
    peaks: list[dict[str, float]] = []
    stats = instance.get_run_step_stats(run_id)
    for step in stats:
        recorded: Usage | None = None
        bytes_read, peak = 0, 0
        for entry in step.materialization_events:
            materialization = entry.asset_materialization
            if materialization is None:
                continue
            metadata = materialization.metadata
            # A multi-asset repeats its step's usage on every family it materializes; chunk
            # counts are each family's own.
            recorded = recorded or Usage.from_metadata(metadata)
            bytes_read += int(_number(metadata.get("bytes_read")) or 0)
            chunks = chunks + Chunks(
                *(int(_number(metadata.get(f"chunks_{s}")) or 0) for s in _CHUNK_STATES)
            )
            for key in ("peak_rss_bytes", "merge_peak_rss_bytes"):
                peak = max(peak, int(_number(metadata.get(key)) or 0))
            peaks.append(footprint(metadata))
        if recorded is None:
            started = step.start_time or 0.0
            ended = step.end_time or started
            recorded = Usage(
                peak_rss_bytes=peak,
                wall_seconds=max(0.0, ended - started),
                bytes_read=bytes_read,
            )
        summed = summed + recorded.priced(prices, container)
    return RunUsage(run_id, len(stats), summed, largest(*peaks), chunks)


_CHUNK_STATES = ("extracted", "reused", "compacted")
_PAGE = 100


def _runs(instance: dg.DagsterInstance, records_filter: Any) -> Iterator[str]:
    """The runs that materialized an asset (partition), newest first, each once."""
    seen: set[str] = set()
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=_PAGE, cursor=cursor)
        for record in page.records:
            if record.run_id not in seen:
                seen.add(record.run_id)
                yield record.run_id
        if not page.has_more:
            return
        cursor = page.cursor


def _latest_and_full(
    instance: dg.DagsterInstance,
    name: str,
    records_filter: Any,
    prices: Prices,
    container: Container,
) -> list[CostLine]:
    """The latest run's line and, when it is another run, the latest full build's (every chunk
    extracted; else the first build) below it; [] when nothing was materialized."""
    latest: RunUsage | None = None
    reference: RunUsage | None = None
    for run_id in _runs(instance, records_filter):
        run = run_usage(instance, run_id, prices, container)
        latest = latest or run
        reference = run  # the oldest so far: the first build unless a full one comes first
        if run.chunks.full:
            break
    if latest is None or reference is None:
        return []
    if reference.run_id == latest.run_id:
        return [latest.line(name, build=build_of(latest.chunks, reference=True), full=True)]
    return [
        latest.line(name, build=build_of(latest.chunks)),
        reference.line(
            name, build=build_of(reference.chunks, reference=True), latest=False, full=True
        ),
    ]


def cost_lines(
    instance: dg.DagsterInstance,
    pairs: list[str] | None,
    *,
    shared: bool = True,
    prices: Prices | None = None,
    container: Container | None = None,
) -> list[CostLine]:
    """Per pair with a materialized training file (and for the shared checkpoints): the run of
    the latest, and when that run reused chunks (a refresh), the latest full build below it."""
    import dagster as dg

    from bqx_assets.core.catalog import PAIRS
    from bqx_assets.defs.assets import SHARED_CHECKPOINT, TRAINING_FILE

    prices, container = prices or Prices(), container or Container()
    lines = []
    for pair in pairs or list(PAIRS):
        found = dg.AssetRecordsFilter(asset_key=TRAINING_FILE, asset_partitions=[pair])
        lines += _latest_and_full(instance, pair, found, prices, container)
    if shared:
        found = dg.AssetRecordsFilter(asset_key=SHARED_CHECKPOINT)
        lines += _latest_and_full(instance, SHARED, found, prices, container)
    return lines


def _costs(args: argparse.Namespace) -> int:
    import dagster as dg

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog

    os.environ.setdefault("DAGSTER_HOME", str(Path.cwd()))
    pairs = [Catalog.load().check_pair(p) for p in args.pairs.split(",")] if args.pairs else None
    prices = Prices(args.vcpu_second, args.gib_second, args.storage_read_tib)
    container = Container(args.vcpus, args.memory_gib)
    with dg.DagsterInstance.get() as instance:
        lines = cost_lines(
            instance, pairs, shared=not args.no_shared, prices=prices, container=container
        )
    print(
        f"prices: ${prices.vcpu_second}/vCPU-s, ${prices.gib_second}/GiB-s "
        f"({container.vcpus:g} vCPU, {container.memory_gib:g} GiB), "
        f"${prices.storage_read_tib}/TiB read (Storage Read API; the first "
        f"{prices.storage_read_free_tib_per_month:g} TiB a month are free, not subtracted)"
    )
    print(format_report(lines))
    summed = totals(lines)
    emit(
        {
            "lines": [line.to_dict() for line in lines],
            "total": summed[0].to_dict(),
            **({"total_full": summed[1].to_dict()} if len(summed) > 1 else {}),
            "prices": vars(prices),
            "container": vars(container),
        }
    )
    return 0 if lines else 1
