"""`bqx merge`: join a targets file and a folder of feature checkpoints into one training file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bqx_assets.cli.commands import emit


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a targets file and feature checkpoints into one wide parquet file",
        description=(
            "Left-join the targets file (the spine: its rows, in its order) with every feature "
            "checkpoint in a folder on interval_time, streaming, in bounded memory. Prints "
            "progress, then one JSON line with rows, columns, seconds and peak_rss_bytes."
        ),
    )
    parser.add_argument("--targets", required=True, type=Path, help="targets parquet (spine)")
    parser.add_argument(
        "--features", required=True, type=Path, help="folder of <table>.parquet checkpoints"
    )
    parser.add_argument("--out", required=True, type=Path, help="output parquet file")
    parser.add_argument(
        "--pair",
        help="use the catalog's tables, order and names for this pair (default: every file in "
        "the folder, sorted by name, columns named <table>__<column>)",
    )
    parser.add_argument("--catalog", type=Path, help="catalog JSON (default: production)")
    parser.add_argument("--row-group-rows", type=int, help="rows per output row group")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # imported here so that `bqx --help` does not load pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.errors import MergeError
    from bqx_assets.core.merge import FeatureSource, merge_checkpoints, sources_for_pair

    folder: Path = args.features
    if not folder.is_dir():
        raise MergeError(f"feature folder {folder} does not exist")
    if args.pair:
        catalog = Catalog.load(args.catalog)
        catalog.check_pair(args.pair)
        spine_columns = list(catalog.targets[args.pair].targets)
        sources = sources_for_pair(catalog, args.pair, lambda t: folder / f"{t.name}.parquet")
    else:
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise MergeError(f"feature folder {folder} holds no .parquet files")
        sources = [FeatureSource(table=f.stem, path=f) for f in files]
        try:
            names = pq.read_schema(args.targets).names
        except FileNotFoundError:
            raise MergeError(f"spine {args.targets}: file does not exist") from None
        except (OSError, pa.ArrowException) as exc:
            raise MergeError(f"spine {args.targets}: not a readable parquet file: {exc}") from exc
        spine_columns = [n for n in names if n.startswith("target_")]
    report = merge_checkpoints(
        args.targets,
        spine_columns,
        sources,
        args.out,
        row_group_rows=args.row_group_rows,
        progress=lambda line: print(line, flush=True),
    )
    emit(
        {
            "rows": report.rows,
            "columns": report.columns,
            "seconds": report.seconds,
            "peak_rss_bytes": report.peak_rss_bytes,
            "bytes_written": report.bytes_written,
            "row_groups": report.row_groups,
            "out": str(args.out),
        }
    )
    return 0
