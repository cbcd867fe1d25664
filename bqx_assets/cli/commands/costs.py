"""`bqx costs`: CPU, memory, wall time, bytes read and estimated cost of each pair's latest run."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.core.costs import Container, CostLine, Prices, Usage, estimate, format_report, total

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
            "given container plus BigQuery bytes scanned. Steps without recorded usage are "
            "measured from their start and end events (CPU unknown: 0)."
        ),
    )
    parser.add_argument("--pairs", default=None, help="comma-separated pairs (default: all built)")
    parser.add_argument("--no-shared", action="store_true", help="leave the shared run out")
    defaults, size = Prices(), Container()
    parser.add_argument("--vcpu-second", type=float, default=defaults.vcpu_second)
    parser.add_argument("--gib-second", type=float, default=defaults.gib_second)
    parser.add_argument("--bigquery-tib", type=float, default=defaults.bigquery_tib)
    parser.add_argument("--vcpus", type=float, default=size.vcpus, help="run container vCPUs")
    parser.add_argument("--memory-gib", type=float, default=size.memory_gib)
    parser.set_defaults(handler=_costs)


def _number(value: Any) -> float | None:
    value = getattr(value, "value", value)
    return float(value) if isinstance(value, int | float) else None


def run_usage(
    instance: dg.DagsterInstance, run_id: str, prices: Prices, container: Container
) -> tuple[int, Usage]:
    """(steps, summed usage) of one run, priced with `prices` for `container`."""
    import dagster as dg

    kinds = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.ASSET_MATERIALIZATION,
    }
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    recorded: dict[str, Usage] = {}
    bytes_read: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for entry in instance.all_logs(run_id, of_type=kinds):
        step, event = entry.step_key, entry.dagster_event
        if step is None or event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[step] = entry.timestamp
        elif event.event_type != dg.DagsterEventType.ASSET_MATERIALIZATION:
            ended[step] = entry.timestamp
        else:
            metadata = event.step_materialization_data.materialization.metadata
            usage = Usage.from_metadata(metadata)
            if usage is not None:
                # A multi-asset repeats its step's usage on every family it materializes.
                recorded.setdefault(step, usage)
            bytes_read[step] += int(_number(metadata.get("bytes_read")) or 0)
            for key in ("peak_rss_bytes", "merge_peak_rss_bytes"):
                peak[step] = max(peak[step], int(_number(metadata.get(key)) or 0))
    summed = Usage()
    steps = sorted(set(started) | set(recorded))
    for step in steps:
        usage = recorded.get(step) or Usage(
            peak_rss_bytes=peak[step],
            wall_seconds=max(0.0, ended.get(step, started[step]) - started[step]),
            bytes_read=bytes_read[step],
        )
        cloud_run, bigquery = estimate(usage.wall_seconds, usage.bytes_read, prices, container)
        summed = summed + Usage(
            cpu_seconds=usage.cpu_seconds,
            peak_rss_bytes=usage.peak_rss_bytes,
            wall_seconds=usage.wall_seconds,
            bytes_read=usage.bytes_read,
            cloud_run_usd=cloud_run,
            bigquery_usd=bigquery,
        )
    return len(steps), summed


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

    prices, container = prices or Prices(), container or Container()
    training = dg.AssetKey("training_file")
    lines = []
    for pair in pairs or list(PAIRS):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=training, asset_partitions=[pair]), limit=1
        ).records
        if records:
            steps, usage = run_usage(instance, records[0].run_id, prices, container)
            lines.append(CostLine(pair, steps, usage))
    if shared:
        records = instance.fetch_materializations(dg.AssetKey(["checkpoints", "tri"]), limit=1)
        if records.records:
            steps, usage = run_usage(instance, records.records[0].run_id, prices, container)
            lines.append(CostLine(SHARED, steps, usage))
    return lines


def _costs(args: argparse.Namespace) -> int:
    import dagster as dg

    from bqx_assets.cli.commands import emit
    from bqx_assets.core.catalog import Catalog

    os.environ.setdefault("DAGSTER_HOME", str(Path.cwd()))
    pairs = [Catalog.load().check_pair(p) for p in args.pairs.split(",")] if args.pairs else None
    prices = Prices(args.vcpu_second, args.gib_second, args.bigquery_tib)
    container = Container(args.vcpus, args.memory_gib)
    with dg.DagsterInstance.get() as instance:
        lines = cost_lines(
            instance, pairs, shared=not args.no_shared, prices=prices, container=container
        )
    print(
        f"prices: ${prices.vcpu_second}/vCPU-s, ${prices.gib_second}/GiB-s "
        f"({container.vcpus:g} vCPU, {container.memory_gib:g} GiB), ${prices.bigquery_tib}/TiB"
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
