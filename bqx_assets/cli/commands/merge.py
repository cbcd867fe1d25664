"""`bqx merge`: join a targets file and a folder of feature checkpoints, or a pair's chunked
checkpoints, into one training file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bqx_assets.cli.commands.extract import add_window_arguments, training_window
from bqx_assets.cli.output import emit


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a targets file and feature checkpoints into one wide parquet file",
        description=(
            "Left-join the targets file (the spine: its rows, in its order) with every feature "
            "checkpoint in a folder on interval_time, streaming, in bounded memory; or, with "
            "--checkpoints and --pair, the pair's chunked checkpoints under a checkpoint root "
            "(what `bqx extract` and the Dagster assets write) for the training window, as the "
            "training_file asset does. The file is written beside --out and renamed onto it "
            "only once complete: a failed merge leaves --out as it was. A training file "
            "already at --out (one a merge wrote) is replaced, which the output says, and with "
            "--checkpoints gives its unchanged row groups (copied, not encoded again); anything "
            "else there is refused unless --replace. Prints progress, then one JSON line with "
            "rows, columns, seconds and peak_rss_bytes."
        ),
    )
    parser.add_argument("--targets", type=Path, help="targets parquet (spine)")
    parser.add_argument("--features", type=Path, help="folder of <table>.parquet checkpoints")
    parser.add_argument(
        "--checkpoints",
        help="checkpoint root (folder or gs://) of chunked checkpoints; needs --pair, instead "
        "of --targets and --features",
    )
    parser.add_argument("--out", required=True, type=Path, help="output parquet file")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace a file at --out that is not a training file (its data is lost)",
    )
    parser.add_argument(
        "--pair",
        help="use the catalog's tables, order and names for this pair (default: every file in "
        "the folder, sorted by name, columns named <table>__<column>)",
    )
    parser.add_argument("--catalog", type=Path, help="catalog JSON (default: production)")
    parser.add_argument("--row-group-rows", type=int, help="rows per output row group")
    add_window_arguments(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # imported here so that `bqx --help` does not load pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.errors import MergeError
    from bqx_assets.core.merge import (
        InputChunk,
        InputTable,
        merge_checkpoints,
        pair_tables,
        spine_table,
    )
    from bqx_assets.core.storage import LocalFile, LocalStorage, StoredFile

    previous: StoredFile | None = None
    out = Path(args.out)
    root = LocalStorage(out.parent, durable=False)
    if args.checkpoints:
        if args.targets or args.features or not args.pair:
            raise MergeError("--checkpoints takes --pair, not --targets or --features")
        catalog = Catalog.load(args.catalog)
        catalog.check_pair(args.pair)
        spine, tables = _chunked(args, catalog)
    elif args.window_start or args.window_end or args.window_days:
        raise MergeError(
            "--window-start, --window-end and --window-days choose --checkpoints' chunks"
        )
    elif not (args.targets and args.features):
        raise MergeError("give --targets and --features, or --checkpoints and --pair")
    elif not (folder := Path(args.features)).is_dir():
        raise MergeError(f"feature folder {folder} does not exist")
    elif args.pair:
        catalog = Catalog.load(args.catalog)
        catalog.check_pair(args.pair)
        spine = spine_table(catalog.targets[args.pair], (InputChunk(LocalFile(args.targets)),))
        tables = pair_tables(
            catalog, args.pair, lambda t: (InputChunk(LocalFile(folder / f"{t.name}.parquet")),)
        )
    else:
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise MergeError(f"feature folder {folder} holds no .parquet files")
        tables = [InputTable.of_files(f.stem, f) for f in files]
        try:
            names = pq.read_schema(args.targets).names
        except FileNotFoundError:
            raise MergeError(f"spine {args.targets}: file does not exist") from None
        except (OSError, pa.ArrowException) as exc:
            raise MergeError(f"spine {args.targets}: not a readable parquet file: {exc}") from exc
        targets = tuple((n, n) for n in names if n.startswith("target_"))
        spine = InputTable.of_files(Path(args.targets).stem, args.targets, columns=targets)
    out_existed = out.exists()
    there = _training_file_at(out, replace=args.replace)
    if there is not None and args.checkpoints:
        previous = root.find_file(out.name)
    report = merge_checkpoints(
        spine,
        tables,
        root.stage(out.name),
        previous=previous,
        row_group_rows=args.row_group_rows,
        progress=lambda line: print(line, flush=True),
    )
    try:
        root.publish_staged(report.staged, out.name)
    except BaseException:
        root.discard(report.staged)
        raise
    emit(
        {
            "rows": report.rows,
            "columns": report.columns,
            "seconds": report.seconds,
            "peak_rss_bytes": report.peak_rss_bytes,
            "bytes_written": report.bytes_written,
            "row_groups": report.row_groups,
            "row_groups_reused": report.row_groups_reused,
            "out": str(out),
            "replaced": out_existed,
        }
    )
    return 0


def _chunked(args: argparse.Namespace, catalog: Any) -> tuple[Any, list[Any]]:
    """The pair's spine and feature tables from a checkpoint root, for the window the pair's
    checkpoints were made for (`checkpoints.select.stored_window`)."""
    from bqx_assets.core.checkpoints.select import stored_window
    from bqx_assets.core.merge import pair_inputs
    from bqx_assets.core.storage import open_storage

    storage = open_storage(args.checkpoints, durable=False)
    window = stored_window(storage, catalog.targets[args.pair], training_window(args))
    inputs = pair_inputs(storage, catalog, args.pair, window)
    return inputs.spine, inputs.tables


def _training_file_at(out: Path, *, replace: bool) -> tuple[int, int] | None:
    """(rows, columns) of the training file at `out`, which the merge will replace (said
    here); None when there is none. Anything else there is refused unless `replace`; a folder
    always."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bqx_assets.core.errors import MergeError
    from bqx_assets.core.merge.reuse import ROW_GROUPS_KEY

    if not out.exists():
        return None
    if out.is_dir():
        raise MergeError(f"--out {out} is a folder: name the training file to write")
    try:
        meta = pq.read_metadata(out)
        written = ROW_GROUPS_KEY.encode() in (meta.metadata or {})
        why = "a parquet file no merge wrote"
    except (OSError, pa.ArrowException) as exc:
        written = False
        why = f"not a readable parquet file: {exc}"
    if written:
        print(f"{out}: replacing the training file there ({meta.num_rows:,} rows x "
              f"{meta.num_columns:,} columns) once the merge is complete", flush=True)  # fmt: skip
        return meta.num_rows, meta.num_columns
    if not replace:
        raise MergeError(
            f"{out} exists and is not a training file ({why}): not replaced; add --replace to "
            "replace it, or choose another --out"
        )
    print(f"{out}: replacing what is there ({why}) once the merge is complete, as --replace "
          "asks", flush=True)  # fmt: skip
    return None
