"""The decode+encode floor: read every file fully once, write the same columns once."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from bqx_assets.core.catalog import TARGET_COLUMNS
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge.pieces import encode_piece, piece_slices
from bqx_assets.core.metrics import peak_rss_bytes


def floor(targets: Path, features: list[Path], out: Path) -> tuple[int, int]:
    """Decode each file (pyarrow's threads) and encode its columns with the merge's writer
    settings and piece size into one output stream. Nothing is aligned and nothing overlaps:
    the work any merge has to do, done once."""
    columns = 0
    rows = 0
    with open(out, "wb") as f:
        for i, path in enumerate([targets, *features]):
            table = pq.read_table(path, columns=[KEY, *TARGET_COLUMNS] if i == 0 else None)
            if i:
                table = table.drop_columns([KEY])
            rows = max(rows, table.num_rows)
            columns += table.num_columns
            for s in piece_slices(table.num_columns, table.num_rows):
                f.write(encode_piece(table.columns[s], table.column_names[s]))
            del table
    return rows, columns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    features = sorted((args.dir / "features").glob("*.parquet"))
    rows, columns = floor(args.dir / "targets.parquet", features, args.out)
    result = {
        "rows": rows,
        "columns": columns,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
