"""The first team's merge: one Polars left join per feature table, then one write."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

from bqx_assets.core.catalog import TARGET_COLUMNS, feature_name
from bqx_assets.core.layout import KEY
from bqx_assets.core.metrics import peak_rss_bytes


def naive_merge(targets: Path, features: list[Path], out: Path) -> pl.DataFrame:
    frame = pl.read_parquet(targets, columns=[KEY, *TARGET_COLUMNS])
    for path in features:
        table = pl.read_parquet(path)
        table = table.rename({c: feature_name(path.stem, c) for c in table.columns if c != KEY})
        frame = frame.join(table, on=KEY, how="left", maintain_order="left")
    frame.write_parquet(out, compression="zstd")
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    features = sorted((args.dir / "features").glob("*.parquet"))
    frame = naive_merge(args.dir / "targets.parquet", features, args.out)
    result = {
        "rows": frame.height,
        "columns": frame.width,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
