"""Write production-shaped synthetic checkpoints (N tables x R rows) and a targets file."""

# The data are the embedded warehouse's (core/synthetic.py: rolling statistics of random walks,
# production's null shares and patterns, rounded like real data), so compression and decoding
# behave as on production data. Checkpoints are written by the refresh's own `write_checkpoint`,
# so the benchmark decodes exactly what the merge reads in production.

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bqx_assets.core.catalog import Catalog, Table
from bqx_assets.core.checkpoints.schema import expected_schema, write_checkpoint
from bqx_assets.core.layout import CHECKPOINT_ROW_GROUP_ROWS, KEY, PAIR_COLUMN
from bqx_assets.core.warehouse.synthetic import Series, feature_table_data, targets_table_data

PAIR = "eurusd"
DATA_VERSION = "synthetic-2"
"""Recorded in shape.json: data folders written by an earlier generator are regenerated."""


def write_table(path: Path, table: Table, series: Series) -> int:
    schema = expected_schema(table)
    data = feature_table_data(table, series).select(schema.names).cast(schema)
    write_checkpoint(data, path, CHECKPOINT_ROW_GROUP_ROWS)
    return path.stat().st_size


def write_targets(path: Path, catalog: Catalog, series: Series) -> int:
    data = targets_table_data(catalog.targets[PAIR], series)
    names = [KEY, PAIR_COLUMN, *(c for c in data.schema.names if c not in (KEY, PAIR_COLUMN))]
    write_checkpoint(data.select(names), path, CHECKPOINT_ROW_GROUP_ROWS)
    return path.stat().st_size


def pick_tables(catalog: Catalog, count: int) -> list[Table]:
    """`count` of the pair's tables spread over the catalog (all of them when count >= 667)."""
    tables = list(catalog.tables_for(PAIR))
    if count >= len(tables):
        return tables
    step = len(tables) / count
    return [tables[int(i * step)] for i in range(count)]


def generate(out: Path, tables: int, rows: int, *, workers: int = 2, seed: int = 7) -> dict:
    """Write `targets.parquet` and `features/<table>.parquet` for `tables` files in all (the
    targets file counts as one, so 668 is the production shape) under `out`."""
    catalog = Catalog.load()
    series = Series(plan_rows=rows, rows=rows, seed=seed)
    features = out / "features"
    features.mkdir(parents=True, exist_ok=True)
    chosen = pick_tables(catalog, max(1, tables - 1))
    started = time.perf_counter()
    size = write_targets(out / "targets.parquet", catalog, series)
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(write_table, features / f"{t.name}.parquet", t, series) for t in chosen]
        size += sum(j.result() for j in jobs)
    shape = {
        "data": DATA_VERSION,
        "tables": len(chosen) + 1,
        "rows": rows,
        "feature_columns": sum(len(t.columns) for t in chosen),
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "shape.json").write_text(json.dumps(shape) + "\n")
    return shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=668, help="files in all, targets included")
    parser.add_argument("--rows", type=int, default=44_000)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(generate(args.dir, args.tables, args.rows, workers=args.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
