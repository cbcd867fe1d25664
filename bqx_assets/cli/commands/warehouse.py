"""`bqx warehouse create|append`: build the synthetic embedded warehouse, or add minutes to it."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from bqx_assets.core.layout import EMBEDDED_WAREHOUSE_PATH as DEFAULT_PATH


def register(subparsers: argparse._SubParsersAction) -> None:
    from bqx_assets.core.warehouse.faults import FAULT_KINDS

    parser = subparsers.add_parser("warehouse", help="manage the embedded (DuckDB) warehouse")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    kinds = "; ".join(f"{k}: {v}" for k, v in FAULT_KINDS.items())
    create = sub.add_parser(
        "create",
        help="create the synthetic production-shaped warehouse",
        description="Fault kinds (--fault KIND[=VALUE]:TARGET[+TARGET...], TARGET a feature "
        f"table or a family): {kinds}.",
    )
    create.add_argument("--rows", type=int, required=True, help="minutes (rows) per pair")
    create.add_argument("--pairs", default="eurusd", help="comma-separated pairs (or 'all')")
    create.add_argument(
        "--path", default=DEFAULT_PATH, help=f"DuckDB file (default {DEFAULT_PATH})"
    )
    create.add_argument("--seed", type=int, default=7)
    create.add_argument(
        "--start",
        default=None,
        help="first minute, ISO 8601 in UTC (default 2024-01-01T00:00, a Monday); a warehouse "
        "of a few hundred minutes needs one inside ETF hours (08:00-20:00) for corr tables to "
        "have rows",
    )
    create.add_argument("--catalog", default=None, help="catalog file (default: packaged)")
    create.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[=VALUE]:TARGET[+TARGET...]",
        help="write a fault into the warehouse and record it (repeatable)",
    )
    create.set_defaults(handler=_create)
    append = sub.add_parser(
        "append",
        help="add the next N trading minutes to every table (tables with a fault stay as they are)",
    )
    append.add_argument("--minutes", type=int, required=True)
    append.add_argument(
        "--path", default=DEFAULT_PATH, help=f"DuckDB file (default {DEFAULT_PATH})"
    )
    append.set_defaults(handler=_append)


def _create(args: argparse.Namespace) -> int:
    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
    from bqx_assets.core.warehouse.embedded import create_warehouse

    catalog = Catalog.load(args.catalog)
    pairs = list(catalog.pairs) if args.pairs == "all" else args.pairs.split(",")
    clock = Stopwatch()
    wh = create_warehouse(
        args.path, catalog, pairs=pairs, rows=args.rows, seed=args.seed, faults=args.fault,
        progress=print, **_start(args.start),
    )  # fmt: skip
    faults = [f.kind + ":" + "+".join(f.tables) for f in wh.faults()]
    wh.close()
    tables = len({t.name for p in pairs for t in catalog.tables_for(p)}) + len(pairs)
    print(f"warehouse {args.path}: {tables} tables, {args.rows} rows per pair, "
          f"{clock.seconds:.1f} s, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")  # fmt: skip
    emit({"path": args.path, "pairs": pairs, "rows": args.rows, "tables": tables,
          "faults": faults, "seconds": round(clock.seconds, 2),
          "peak_rss_bytes": peak_rss_bytes()})  # fmt: skip
    return 0


def _append(args: argparse.Namespace) -> int:
    from bqx_assets.cli.output import emit
    from bqx_assets.core.metrics import Stopwatch
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

    clock = Stopwatch()
    wh = EmbeddedWarehouse(args.path, read_only=False)
    try:
        added = wh.append(args.minutes, progress=print)
        rows = int(wh.params()["rows"])
    finally:
        wh.close()
    changed = sum(1 for n in added.values() if n)
    print(f"warehouse {args.path}: {changed} tables grew, {sum(added.values())} rows added, "
          f"spine now {rows} rows, {clock.seconds:.1f} s")  # fmt: skip
    emit({"path": args.path, "minutes": args.minutes, "tables_changed": changed,
          "rows_added": sum(added.values()), "rows": rows,
          "seconds": round(clock.seconds, 2)})  # fmt: skip
    return 0


def _start(text: str | None) -> dict[str, datetime]:
    from bqx_assets.core.errors import WarehouseError

    if text is None:
        return {}
    try:
        start = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WarehouseError(f"--start {text!r} is not an ISO 8601 date and time") from exc
    return {"start": start.replace(tzinfo=start.tzinfo or UTC)}
