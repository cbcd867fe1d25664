"""`bqx extract`: refresh a pair's chunked checkpoints from the warehouse, as Dagster's steps do."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bqx_assets.core.layout import EMBEDDED_WAREHOUSE_PATH

if TYPE_CHECKING:
    from bqx_assets.core.checkpoints.window import TrainingWindow
    from bqx_assets.core.warehouse import Warehouse


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """The training window's options (the settings' window_start/end/days)."""
    parser.add_argument("--window-start", help="first day of training (ISO, UTC)")
    parser.add_argument("--window-end", help="day after the last (ISO, UTC)")
    parser.add_argument(
        "--window-days",
        type=int,
        help="a rolling window: the last N trading days of the pair's targets (not with "
        "--window-start)",
    )


def training_window(args: argparse.Namespace) -> TrainingWindow:
    from bqx_assets.core.checkpoints.window import TrainingWindow

    return TrainingWindow.parse(args.window_start, args.window_end, args.window_days)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="refresh a pair's chunked checkpoints (its own, shared and targets tables)",
        description=(
            "Brings the chunks of every table a pair's training file is made from up to date "
            "with the warehouse's day partitions, in the layout the Dagster checkpoint assets "
            "write and `bqx merge --checkpoints` reads: unchanged chunks are reused after "
            "verification, changed or new days read, restricted to their range. It writes "
            "only that layout under the root (<pair>/<table>/ and shared/<table>/: chunks, "
            "their manifests and chunks.index.json) and leaves every other file there alone: a "
            "chunk is replaced only once its new version is complete, and chunks a new layout "
            "supersedes are deleted last, so a run that fails leaves the complete chunks for "
            "the next to reuse. Prints progress, then one JSON line with chunks extracted, "
            "reused and compacted, bytes read and seconds."
        ),
    )
    parser.add_argument("--pair", required=True)
    parser.add_argument(
        "--checkpoints", required=True, help="checkpoint root: folder (made if missing) or gs://"
    )
    parser.add_argument(
        "--warehouse",
        default=EMBEDDED_WAREHOUSE_PATH,
        help=f"embedded warehouse file (default {EMBEDDED_WAREHOUSE_PATH})",
    )
    parser.add_argument(
        "--bigquery-project",
        help="read BigQuery in this project instead (the catalog's datasets)",
    )
    parser.add_argument("--catalog", help="catalog JSON (default: production)")
    parser.add_argument("--threads", type=int, default=4, help="tables read at once")
    parser.add_argument("--workdir", help="local scratch (default: the system's temporary folder)")
    add_window_arguments(parser)
    parser.set_defaults(handler=_run)


def _warehouse(args: argparse.Namespace, features: str, targets: str) -> Warehouse:
    if args.bigquery_project:
        from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(args.bigquery_project, features, targets)
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

    return EmbeddedWarehouse(args.warehouse)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.checkpoints.refresh import RefreshProgress, refresh_checkpoints
    from bqx_assets.core.errors import ExtractionError
    from bqx_assets.core.metrics import Stopwatch
    from bqx_assets.core.storage import open_storage

    clock = Stopwatch()
    window = training_window(args)  # a bad window is refused before anything is opened
    if "://" not in args.checkpoints and Path(args.checkpoints).is_file():
        raise ExtractionError(f"--checkpoints {args.checkpoints} is a file, not a folder")
    catalog = Catalog.load(args.catalog)
    catalog.check_pair(args.pair)
    spine = catalog.targets[args.pair]
    sources = [spine, *catalog.tables_for(args.pair)]
    # Checkpoints are verified against their manifests before reuse: no fsync needed.
    storage = open_storage(args.checkpoints, durable=False)

    def report(progress: RefreshProgress) -> None:
        print(f"pair {args.pair}: {progress.line()}", flush=True)

    wh = _warehouse(args, catalog.features_dataset, catalog.targets_dataset)
    try:
        # The window resolved once for the whole pair, as a checkpoint step resolves it.
        step = refresh_checkpoints(
            wh,
            storage,
            sources,
            [spine],
            window,
            f"pair {args.pair}",
            threads=args.threads,
            workdir=Path(args.workdir) if args.workdir else None,
            progress=report,
        )
    finally:
        wh.close()
    done = step.checkpoints
    start = step.window.training.start
    emit(
        {
            "pair": args.pair,
            "tables": len(done),
            "chunks_extracted": sum(c.count("extracted") for c in done),
            "chunks_reused": sum(c.count("reused") for c in done),
            "chunks_compacted": sum(c.count("compacted") for c in done),
            "bytes_read": sum(c.bytes_read for c in done),
            "window_start": start.isoformat() if start else None,
            "checkpoints": storage.uri,
            "seconds": round(clock.seconds, 2),
        }
    )
    return 0
