"""`bqx demo`: one pair's whole graph through Dagster on the embedded default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.core.errors import BqxError, WarehouseError

if TYPE_CHECKING:
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.storage import Storage

DEFAULT_ROWS = 5_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="materialize one pair from the embedded warehouse to a validated training file",
        description=(
            "Creates the embedded warehouse if there is none (--rows minutes of the pair), "
            "then materializes the shared checkpoints and the pair's partition through Dagster "
            "in the local instance (DAGSTER_HOME, default: the current folder with its "
            "dagster.yaml), so `dagster dev` shows the runs afterwards. A warehouse that exists "
            "is used as it is, never recreated (after `bqx warehouse append`, the demo builds "
            "from the grown warehouse): one that lacks the pair or the catalog's tables, or "
            "whose rows differ from a --rows given, stops the demo with an error naming it. A "
            "run that was killed resumes: completed checkpoints are verified and reused."
        ),
    )
    parser.add_argument("--pair", default="eurusd")
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help=f"minutes per table of a warehouse the demo creates (default {DEFAULT_ROWS:,}); "
        "an existing warehouse is used as it is, and a --rows that differs from its rows is "
        "refused",
    )
    parser.add_argument(
        "--warehouse",
        default=None,
        help="DuckDB file, used as it is if it exists, else created (default: the "
        "deployment's, BQX_WAREHOUSE_PATH or data/warehouse.duckdb)",
    )
    parser.set_defaults(handler=_demo)


def ensure_warehouse(path: str, catalog: Catalog, pair: str, rows: int | None) -> tuple[int, bool]:
    """The embedded warehouse the runs read, for `pair` of `catalog`: created at `rows` (default
    DEFAULT_ROWS) when there is none; an existing one used as it is, or an error naming it and
    what does not fit. Never replaces a file. Returns (its rows, whether it was created)."""
    from bqx_assets.cli.commands.warehouse import existing_warehouse
    from bqx_assets.core.warehouse.embedded import create_warehouse

    there = existing_warehouse(path)
    if there is None:
        rows = DEFAULT_ROWS if rows is None else rows
        print(f"warehouse {path}: creating {rows:,} rows for {pair}", flush=True)
        create_warehouse(path, catalog, pairs=[pair], rows=rows, progress=print).close()
        return rows, True
    mismatch = []
    if pair not in there.pairs:
        mismatch.append(f"it holds pairs {','.join(there.pairs)}, not {pair}")
    else:
        missing = _missing_tables(there.catalog, catalog, pair)
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            mismatch.append(
                f"it lacks {len(missing):,} of the tables the catalog gives {pair} ({shown}): "
                "it was made from another catalog"
            )
    if mismatch:
        remedy = (
            f"replace it with `bqx warehouse create --replace --path {path} --pairs {pair} "
            "--rows N`"
        )
    else:
        remedy = "leave out --rows to build from it as it is"
    if rows is not None and rows != there.rows:
        mismatch.append(f"it holds {there.rows:,} rows, not the {rows:,} of --rows")
    if mismatch:
        raise WarehouseError(
            f"warehouse {path} does not fit this demo: {'; '.join(mismatch)}. An existing "
            f"warehouse is used as it is, never recreated: {remedy}, or name a --warehouse "
            "that does not exist yet for the demo to create"
        )
    print(f"warehouse {path}: using it as it is ({there.describe()})", flush=True)
    return there.rows, False


def _missing_tables(held: Catalog, wanted: Catalog, pair: str) -> list[str]:
    """The tables `wanted` reads for `pair` that a warehouse made from `held` does not have."""
    have = {(held.features_dataset, name) for name in held.tables}
    have |= {(held.targets_dataset, t.name) for t in held.targets.values()}
    need = [(wanted.targets_dataset, wanted.targets[pair].name)]
    need += [(wanted.features_dataset, t.name) for t in wanted.tables_for(pair)]
    return [f"{dataset}.{name}" for dataset, name in need if (dataset, name) not in have]


def published_shape(output: Storage, key: str) -> tuple[int, int] | None:
    """(rows, columns) of a published training file, from its parquet footer, wherever the
    output root is (a gs:// object is read in place by byte ranges, the footer only). None when
    nothing is published under `key`."""
    import pyarrow.parquet as pq

    found = output.find_file(key)
    if found is None:
        return None
    with found.reader() as stored:
        meta = pq.ParquetFile(stored).metadata
    return meta.num_rows, meta.num_columns


def demo_resources(warehouse: str | None) -> dict[str, Any]:
    """The deployment's resources (`defs/environment.py`), on the embedded warehouse: `warehouse`
    replaces its DuckDB file when given."""
    from bqx_assets.defs.environment import resources_for
    from bqx_assets.defs.resources import EmbeddedWarehouseResource

    resources = resources_for()
    if not isinstance(resources["warehouse"], EmbeddedWarehouseResource):
        raise BqxError("bqx demo runs on the embedded warehouse; unset BQX_ENV=prod")
    if warehouse:
        resources["warehouse"] = EmbeddedWarehouseResource(path=warehouse)
    return resources


def _demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.layout import training_file_key
    from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
    from bqx_assets.core.storage import open_storage
    from bqx_assets.definitions import build_definitions
    from bqx_assets.defs.environment import resolved
    from bqx_assets.defs.jobs import PAIR_JOB, SHARED_JOB

    clock = Stopwatch()
    os.environ.setdefault("DAGSTER_HOME", str(Path.cwd()))
    resources = demo_resources(args.warehouse)
    catalog = Catalog.load(resolved(resources["settings"].catalog_path))
    catalog.check_pair(args.pair)
    warehouse = str(resolved(resources["warehouse"].path))
    warehouse_rows, created = ensure_warehouse(warehouse, catalog, args.pair, args.rows)
    defs = build_definitions(resources)

    instance = dg.DagsterInstance.get()
    print("materializing the shared checkpoints", flush=True)
    shared = defs.resolve_job_def(SHARED_JOB).execute_in_process(
        instance=instance, raise_on_error=False
    )
    if not shared.success:
        raise BqxError(f"shared checkpoints failed (run {shared.run_id}); see the log above")
    print(f"materializing partition {args.pair}", flush=True)
    run = defs.resolve_job_def(PAIR_JOB).execute_in_process(
        instance=instance, partition_key=args.pair, raise_on_error=False
    )
    checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
    output = open_storage(resolved(resources["training_io_manager"].output_root))
    key = training_file_key(args.pair)
    path = output.local_path(key) or output.uri_of(key)
    shape = published_shape(output, key) if run.success else None
    result = {
        "pair": args.pair,
        "training_file": str(path),
        "published": shape is not None and all(checks.values()),
        "rows": shape[0] if shape else None,
        "columns": shape[1] if shape else None,
        "checks": checks,
        "warehouse": {"path": warehouse, "rows": warehouse_rows, "created": created},
        "run_id": run.run_id,
        "seconds": round(clock.seconds, 2),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    print()
    print(f"training file: {result['training_file']}")
    print(f"shape:         {result['rows']} rows x {result['columns']} columns")
    for name, passed in checks.items():
        print(f"check {name:18} {'passed' if passed else 'FAILED'}")
    print(
        f"time:          {result['seconds']} s, peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB"
    )
    emit(result)
    return 0 if run.success and checks and all(checks.values()) else 1
