"""`bqx costs`: CPU, memory, wall time, bytes read and estimated cost of each pair's latest run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.core.costs import (
    STORAGE_READ_PRICING_URL,
    Container,
    CostLine,
    Prices,
    Usage,
    footprint,
    format_report,
    largest,
    total,
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
            "given container plus Storage Read API bytes read. Steps without recorded usage "
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


def run_usage(
    instance: dg.DagsterInstance, run_id: str, prices: Prices, container: Container
) -> tuple[int, Usage, dict[str, float]]:
    """(steps, summed usage priced with `prices` for `container`, largest footprint) of one run,
    from Dagster's step statistics: each step's recorded usage, or where a step recorded none,
    its wall time and the `bytes_read` and peak memory its materializations report."""
    summed = Usage()
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
            # A multi-asset repeats its step's usage on every family it materializes.
            recorded = recorded or Usage.from_metadata(metadata)
            bytes_read += int(_number(metadata.get("bytes_read")) or 0)
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
    return len(stats), summed, largest(*peaks)


def cost_lines(
    instance: dg.DagsterInstance,
    pairs: list[str] | None,
    *,
    shared: bool = True,
    prices: Prices | None = None,
    container: Container | None = None,
) -> list[CostLine]:
    """One line per pair with a materialized training file (and one for the shared run)."""
    import dagster as dg

    from bqx_assets.core.catalog import PAIRS
    from bqx_assets.defs.assets import SHARED_CHECKPOINT, TRAINING_FILE

    prices, container = prices or Prices(), container or Container()
    training = TRAINING_FILE
    lines = []
    for pair in pairs or list(PAIRS):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=training, asset_partitions=[pair]), limit=1
        ).records
        if records:
            steps, usage, peaks = run_usage(instance, records[0].run_id, prices, container)
            lines.append(CostLine(pair, steps, usage, peaks))
    if shared:
        records = instance.fetch_materializations(SHARED_CHECKPOINT, limit=1)
        if records.records:
            run_id = records.records[0].run_id
            steps, usage, peaks = run_usage(instance, run_id, prices, container)
            lines.append(CostLine(SHARED, steps, usage, peaks))
    return lines


def _costs(args: argparse.Namespace) -> int:
    import dagster as dg

    from bqx_assets.cli.commands import emit
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
    emit(
        {
            "lines": [line.to_dict() for line in lines],
            "total": total(lines).to_dict(),
            "prices": vars(prices),
            "container": vars(container),
        }
    )
    return 0 if lines else 1
