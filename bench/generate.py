"""Write production-shaped synthetic checkpoints (N tables x R rows) and a targets file."""

# Checkpoints are written by extraction's own `write_checkpoint`, so the benchmark decodes
# exactly what the merge reads in production.

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from bqx_assets.core.catalog import Catalog, Table
from bqx_assets.core.extraction import write_checkpoint
from bqx_assets.core.layout import CHECKPOINT_ROW_GROUP_ROWS, KEY, PAIR_COLUMN

PAIR = "eurusd"
START = np.datetime64("2020-01-06T00:00", "m")  # a Monday
NULL_RATE = {"corr": 0.53, "tri": 0.24, "cov": 0.10}  # DOMAIN: null share per family
DEFAULT_NULL_RATE = 0.05
KEY_TYPE = pa.timestamp("us", tz="UTC")


def trading_minutes(rows: int, start: np.datetime64 = START) -> np.ndarray:
    """`rows` minutes of FX trading time from `start`, as int64 microseconds since the epoch.

    The market is closed from Friday 22:00 to Sunday 22:00 UTC (the weekend gaps)."""
    out: list[np.ndarray] = []
    have = 0
    cursor = start
    while have < rows:
        week = cursor + np.arange(7 * 24 * 60)
        minute_of_week = (week - np.datetime64("1970-01-05T00:00", "m")).astype(np.int64) % (
            7 * 24 * 60
        )  # 1970-01-05 is a Monday
        open_ = ~((minute_of_week >= 4 * 1440 + 22 * 60) & (minute_of_week < 6 * 1440 + 22 * 60))
        out.append(week[open_])
        have += int(open_.sum())
        cursor = week[-1] + 1
    minutes = np.concatenate(out)[:rows]
    return minutes.astype("datetime64[us]").astype(np.int64)


def _column(rng: np.random.Generator, dtype: str, n: int, null_rate: float, name: str) -> pa.Array:
    mask = rng.random(n) < null_rate
    if dtype == "FLOAT64":
        # rounded like rolling statistics of 5-decimal prices, so zstd sees realistic entropy
        values = np.round(rng.standard_normal(n) * 0.087, 6)
        return pa.array(values, pa.float64(), mask=mask)
    if dtype == "INT64":
        return pa.array(rng.integers(0, 50, n), pa.int64(), mask=mask)
    if dtype == "BOOL":
        return pa.array(rng.random(n) < 0.5, pa.bool_(), mask=mask)
    value = name.rsplit("_", 1)[0] if "regime" in name else name  # constant labels
    return pa.array(np.full(n, value, dtype=object), pa.string(), mask=mask)


def table_rows(rng: np.random.Generator, keys: np.ndarray) -> np.ndarray:
    """Keys of one feature table: the spine's, cut at its own start and end, with a few gaps and
    a few keys before the spine starts (rows the merge must drop)."""
    n = len(keys)
    head = int(rng.integers(0, max(1, n // 200)))
    tail = n - int(rng.integers(0, max(1, n // 100)))
    own = keys[head:tail]
    keep = rng.random(len(own)) >= 0.002
    early = keys[0] - np.arange(1, 31, dtype=np.int64)[::-1] * 60_000_000
    return np.concatenate([early, own[keep]])


def write_table(path: Path, table: Table, keys: np.ndarray, seed: int) -> int:
    rng = np.random.default_rng(seed)
    own = table_rows(rng, keys)
    rate = NULL_RATE.get(table.family, DEFAULT_NULL_RATE)
    arrays = [pa.array(own, KEY_TYPE)]
    names = [KEY]
    for column in table.columns:
        arrays.append(_column(rng, column.dtype, len(own), rate, column.name))
        names.append(column.name)
    write_checkpoint(pa.table(arrays, names=names), path, CHECKPOINT_ROW_GROUP_ROWS)
    return path.stat().st_size


def write_targets(path: Path, catalog: Catalog, keys: np.ndarray, seed: int) -> int:
    rng = np.random.default_rng(seed)
    n = len(keys)
    arrays: list[pa.Array] = [pa.array(keys, KEY_TYPE), pa.array([PAIR] * n, pa.string())]
    names = [KEY, PAIR_COLUMN]
    for column in catalog.targets[PAIR].columns:
        values = rng.standard_normal(n) * 0.087
        mask = np.zeros(n, bool)
        if column.name.startswith("target_"):
            mask[: min(n, 60)] = True  # look-back and look-ahead windows
            mask[-min(n, 105) :] = True
        arrays.append(pa.array(values, pa.float64(), mask=mask))
        names.append(column.name)
    write_checkpoint(pa.table(arrays, names=names), path, CHECKPOINT_ROW_GROUP_ROWS)
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
    keys = trading_minutes(rows)
    features = out / "features"
    features.mkdir(parents=True, exist_ok=True)
    chosen = pick_tables(catalog, max(1, tables - 1))
    started = time.perf_counter()
    size = write_targets(out / "targets.parquet", catalog, keys, seed)
    with ProcessPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(write_table, features / f"{t.name}.parquet", t, keys, seed + 1 + i)
            for i, t in enumerate(chosen)
        ]
        size += sum(j.result() for j in jobs)
    shape = {
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
