"""`bqx demo`: one pair's whole graph through Dagster on the embedded default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.core.errors import BqxError

if TYPE_CHECKING:
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.storage import Storage

DEFAULT_ROWS = 5_000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="materialize one pair from the embedded warehouse to a validated training file",
        description=(
            "Creates the embedded warehouse if it is missing (or holds other rows or pairs), "
            "then materializes the shared checkpoints and the pair's partition through Dagster "
            "in the local instance (DAGSTER_HOME, default: the current folder with its "
            "dagster.yaml), so `dagster dev` shows the runs afterwards. A run that was killed "
            "resumes: completed checkpoints are verified and reused."
        ),
    )
    parser.add_argument("--pair", default="eurusd")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="minutes per table")
    parser.add_argument("--warehouse", default=None, help="DuckDB file (default: deployment's)")
    parser.set_defaults(handler=_demo)


def _ensure_warehouse(path: str, catalog: Catalog, pair: str, rows: int) -> None:
    """The embedded warehouse of `catalog` (the one the runs read) for `pair`, made unless it
    is there with these rows and the pair."""
    from bqx_assets.core.warehouse.embedded import create_warehouse, warehouse_params

    params = warehouse_params(path)
    if params and int(params["rows"]) == rows and pair in params["pairs"].split(","):
        print(f"warehouse {path}: reusing ({rows} rows, pairs {params['pairs']})", flush=True)
        return
    print(f"warehouse {path}: creating {rows} rows for {pair}", flush=True)
    create_warehouse(path, catalog, pairs=[pair], rows=rows, progress=print).close()


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
    defs = build_definitions(resources)
    catalog = Catalog.load(resolved(resources["settings"].catalog_path))
    catalog.check_pair(args.pair)
    _ensure_warehouse(str(resolved(resources["warehouse"].path)), catalog, args.pair, args.rows)

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
