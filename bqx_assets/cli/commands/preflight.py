"""`bqx preflight`: the configured warehouse's metadata against the catalog, before a run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check the configured warehouse against the catalog (metadata only)",
        description=(
            "Checks the warehouse of the current deployment (BQX_ENV: local = embedded DuckDB, "
            "prod = BigQuery) against the catalog from metadata alone, reading no row: the "
            "datasets' location, each table's existence, type (a TABLE), partitioning (DAY on "
            "interval_time), key and column types, rows in the streaming buffer, and whether "
            "the credentials may create read sessions and extract jobs. Prints one line per "
            "defect and what a full build and a refresh will read and cost; exits 1 on any "
            "defect."
        ),
    )
    parser.add_argument("--catalog", default=None, help="catalog JSON (default: the settings')")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.costs import Prices
    from bqx_assets.core.preflight import preflight
    from bqx_assets.defs.environment import resolved, resolved_resource, resources_for

    resources = resources_for()
    settings = resources["settings"]
    catalog = Catalog.load(args.catalog or resolved(settings.catalog_path))
    prices = Prices(storage_read_tib=float(resolved(settings.bq_price_per_tib)))
    # The deployment's warehouse, its BQX_ variables read now (this is not a run).
    warehouse = resolved_resource(resources["warehouse"]).open()
    try:
        report = preflight(warehouse, catalog, prices=prices)
    finally:
        warehouse.close()
    for line in report.lines():
        print(line, flush=True)
    emit(report.to_dict())
    return 0 if report.ok else 1
