"""`bqx catalog refresh`: rebuild the catalog from the warehouse's INFORMATION_SCHEMA."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("catalog", help="inspect or refresh the table catalog")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    refresh = sub.add_parser(
        "refresh",
        help="rebuild the catalog from INFORMATION_SCHEMA of the configured warehouse",
        description=(
            "Reads INFORMATION_SCHEMA.COLUMNS of the features and targets datasets of the "
            "warehouse of the current deployment (BQX_ENV: local = embedded DuckDB, prod = "
            "BigQuery) and writes the catalog file. Tables without interval_time are left out "
            "with a logged reason. Point BQX_CATALOG_PATH at the file to use it."
        ),
    )
    refresh.add_argument("--out", default="data/catalog.json", help="catalog file to write")
    refresh.add_argument("--pairs", default=None, help="comma-separated pairs (default: all)")
    refresh.set_defaults(handler=_refresh)
    show = sub.add_parser("show", help="print the catalog's shape per pair")
    show.add_argument("--catalog", default=None)
    show.add_argument("--pair", default="eurusd")
    show.set_defaults(handler=_show)


def _refresh(args: argparse.Namespace) -> int:
    import logging

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import PAIRS, Catalog, catalog_from_schema
    from bqx_assets.defs.environment import resolved_resource, resources_for

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    packaged = Catalog.load()
    # The deployment's warehouse, its BQX_ variables read now (this is not a run).
    warehouse = resolved_resource(resources_for()["warehouse"]).open()
    try:
        rows = warehouse.information_schema()
    finally:
        warehouse.close()
    targets = {
        r.table.removeprefix("targets_") for r in rows if r.dataset == packaged.targets_dataset
    }
    pairs = args.pairs.split(",") if args.pairs else [p for p in PAIRS if p in targets]
    catalog = catalog_from_schema(
        rows,
        project=packaged.project,
        features_dataset=packaged.features_dataset,
        targets_dataset=packaged.targets_dataset,
        pairs=pairs,
    )
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    catalog.dump(args.out)
    per_pair = {p: len(catalog.tables_for(p)) for p in catalog.pairs}
    print(f"catalog {args.out}: {len(catalog.tables)} tables, {len(catalog.excluded)} left out")
    emit({"catalog": args.out, "pairs": list(catalog.pairs), "tables": len(catalog.tables),
          "tables_per_pair": per_pair, "excluded": catalog.excluded})  # fmt: skip
    return 0


def _show(args: argparse.Namespace) -> int:
    from collections import Counter

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog

    catalog = Catalog.load(args.catalog)
    tables = catalog.tables_for(args.pair)
    columns = Counter()
    for t in tables:
        columns[t.family] += len(t.columns)
    for family in catalog.families():
        print(
            f"{family:8} {sum(t.family == family for t in tables):4} tables "
            f"{columns[family]:6} columns"
        )
    emit({"pair": args.pair, "tables": len(tables), "feature_columns": sum(columns.values()),
          "training_columns": len(catalog.training_columns(args.pair))})  # fmt: skip
    return 0
