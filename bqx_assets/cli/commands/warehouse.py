"""`bqx warehouse create`: build the synthetic embedded warehouse."""

from __future__ import annotations

import argparse

DEFAULT_PATH = "data/warehouse.duckdb"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("warehouse", help="manage the embedded (DuckDB) warehouse")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create the synthetic production-shaped warehouse")
    create.add_argument("--rows", type=int, required=True, help="minutes (rows) per pair")
    create.add_argument("--pairs", default="eurusd", help="comma-separated pairs (or 'all')")
    create.add_argument(
        "--path", default=DEFAULT_PATH, help=f"DuckDB file (default {DEFAULT_PATH})"
    )
    create.add_argument("--seed", type=int, default=7)
    create.add_argument("--catalog", default=None, help="catalog file (default: packaged)")
    create.set_defaults(handler=_create)


def _create(args: argparse.Namespace) -> int:
    from bqx_assets.cli.commands import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.embedded import create_warehouse
    from bqx_assets.core.metrics import Stopwatch

    catalog = Catalog.load(args.catalog)
    pairs = list(catalog.pairs) if args.pairs == "all" else args.pairs.split(",")
    clock = Stopwatch()
    wh = create_warehouse(
        args.path, catalog, pairs=pairs, rows=args.rows, seed=args.seed, progress=print
    )
    tables = len({t.name for p in pairs for t in catalog.tables_for(p)}) + len(pairs)
    wh.close()
    print(f"warehouse {args.path}: {tables} tables, {args.rows} rows per table, "
          f"{clock.seconds:.1f} s")  # fmt: skip
    emit({"path": args.path, "pairs": pairs, "rows": args.rows, "tables": tables,
          "seconds": round(clock.seconds, 2)})  # fmt: skip
    return 0
