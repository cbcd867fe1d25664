"""Extraction throughput from the embedded warehouse against DuckDB's own parquet export.

Both paths read the same tables of one pair in the same run, with the same number of threads:
(a) `refresh_tables` from nothing (query to Arrow, conform, sort check, zstd parquet chunks,
checksums, manifests) and
(b) DuckDB `COPY (SELECT ... ORDER BY interval_time) TO parquet (zstd)`, the warehouse's native
export. Throughput is the tables' logical size (BigQuery bytes) per second.

    uv run python bench/extract_throughput.py --rows 5000 [--tables 668] [--warehouse PATH]

The warehouse holds the realistic synthetic data (core/synthetic.py); `--tables N` builds and
reads N of the pair's tables spread over the catalog (the targets table counts as one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse, warehouse_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import pick_tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--pair", default="eurusd")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tables", type=int, default=668, help="tables in all, targets included")
    parser.add_argument("--warehouse", default="bench/out/extract/warehouse.duckdb")
    args = parser.parse_args()

    catalog = _catalog(args.pair, args.tables)
    params = warehouse_params(args.warehouse)
    built = None
    if params:
        existing = EmbeddedWarehouse(args.warehouse)
        built = existing.catalog()
        existing.close()
    if not params or int(params["rows"]) != args.rows or built != catalog:
        create_warehouse(args.warehouse, catalog, pairs=[args.pair], rows=args.rows).close()
    wh = EmbeddedWarehouse(args.warehouse)
    sources = [*catalog.tables_for(args.pair), catalog.targets[args.pair]]
    logical = sum(
        s.bytes for s in wh.states(catalog.features_dataset, [t.name for t in sources]).values()
    )
    logical += wh.state(catalog.targets_dataset, catalog.targets[args.pair].name).bytes

    results = {}
    for round_ in range(2):
        with tempfile.TemporaryDirectory(dir="bench/out") as tmp:
            started = time.perf_counter()
            refresh_tables(
                wh,
                sources,
                LocalStorage(Path(tmp) / "ckpt", durable=False),
                threads=args.threads,
                workdir=Path(tmp) / "work",
            )
            ours = time.perf_counter() - started
            out = Path(tmp) / "export"
            out.mkdir()
            started = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(
                    pool.map(
                        lambda s, out=out: wh.export_parquet(
                            s.dataset, s.name, out / f"{s.name}.parquet"
                        ),
                        sources,
                    )
                )
            native = time.perf_counter() - started
            shutil.rmtree(out)
        results[round_] = (ours, native)
        print(f"round {round_ + 1}: extraction {ours:.1f} s, native export {native:.1f} s")
    ours, native = min(r[0] for r in results.values()), min(r[1] for r in results.values())
    line = {
        "bench": "extraction",
        "tables": len(sources),
        "rows": args.rows,
        "logical_mb": round(logical / 1e6, 1),
        "extraction_mb_per_s": round(logical / 1e6 / ours, 1),
        "native_export_mb_per_s": round(logical / 1e6 / native, 1),
        "ratio": round(native / ours, 2),
    }
    print(json.dumps(line))


def _catalog(pair: str, tables: int) -> Catalog:
    """The pair's catalog cut to `tables` files in all, spread over its families."""
    full = Catalog.load().subset([pair])
    names = {t.name for t in pick_tables(full, max(1, tables - 1))}
    return dataclasses.replace(full, tables={n: t for n, t in full.tables.items() if n in names})


if __name__ == "__main__":
    main()
