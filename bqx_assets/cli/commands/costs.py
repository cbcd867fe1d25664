"""`bqx costs`: CPU, memory, wall time, bytes read and estimated cost of each pair's latest run,
beside those of its latest full build."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bqx_assets.core.costs import (
    JOB,
    STORAGE_READ_PRICING_URL,
    Container,
    Prices,
    format_report,
    totals,
)


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
    defaults, size = Prices(), JOB
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


def _costs(args: argparse.Namespace) -> int:
    import dagster as dg

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.defs.costs import cost_lines

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
        f"{prices.storage_read_free_tib_per_month:g} TiB a month are free, not subtracted), "
        f"${prices.query_tib}/TiB billed for the partition look-ups (on-demand queries); "
        "bytes read are the read sessions' estimates, the queries' bytes as billed"
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
