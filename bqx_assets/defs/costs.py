"""What each pair's runs used and cost, read from the Dagster instance's records of their steps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from bqx_assets.core.catalog import PAIRS
from bqx_assets.core.costs import (
    Chunks,
    Container,
    CostLine,
    Prices,
    Usage,
    build_of,
    footprint,
    largest,
)
from bqx_assets.defs.assets import SHARED_CHECKPOINT, TRAINING_FILE
from bqx_assets.defs.metadata import recorded_usage

SHARED = "shared"
"""The line of the shared checkpoints' run."""


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
            # A step records its usage on one of the assets it materializes; chunk counts are
            # each family's own.
            recorded = recorded or Usage.from_metadata(recorded_usage(metadata))
            bytes_read += int(_number(metadata.get("bytes_read")) or 0)
            chunks = chunks + Chunks(
                *(int(_number(metadata.get(f"chunks_{s}")) or 0) for s in _CHUNK_STATES)
            )
            for key in ("peak_rss_bytes", "merge_peak_rss_bytes"):
                peak = max(peak, int(_number(metadata.get(key)) or 0))
            peaks.append(footprint(recorded_usage(metadata)))
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
    prices, container = prices or Prices(), container or Container()
    lines = []
    for pair in pairs or list(PAIRS):
        found = dg.AssetRecordsFilter(asset_key=TRAINING_FILE, asset_partitions=[pair])
        lines += _latest_and_full(instance, pair, found, prices, container)
    if shared:
        found = dg.AssetRecordsFilter(asset_key=SHARED_CHECKPOINT)
        lines += _latest_and_full(instance, SHARED, found, prices, container)
    return lines


def latest_build(
    instance: dg.DagsterInstance,
    pair: str,
    prices: Prices | None = None,
    container: Container | None = None,
) -> RunUsage | None:
    """What the run of the pair's latest training file used, priced; None before its first."""
    found = dg.AssetRecordsFilter(asset_key=TRAINING_FILE, asset_partitions=[pair])
    for run_id in _runs(instance, found):
        return run_usage(instance, run_id, prices or Prices(), container or Container())
    return None
