"""`bqx validate FILE --pair P`: the gate checks of a training file, outside Dagster."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="run the gate checks on a training file (exit 0 pass, 1 fail)",
        description=(
            "Check a training file from its parquet footer and key column only: rows, columns, "
            "targets, nulls per family, keys, target leakage. Prints a report, then one JSON line."
        ),
    )
    parser.add_argument("file", help="training parquet file")
    parser.add_argument("--pair", required=True, help="currency pair, e.g. eurusd")
    spine = parser.add_mutually_exclusive_group()
    spine.add_argument("--spine-rows", type=int, help="rows of the pair's targets table")
    spine.add_argument(
        "--targets", help="the pair's targets parquet file: its row count is the spine"
    )
    parser.add_argument("--catalog", help="catalog JSON file (default: the production catalog)")
    parser.add_argument("--min-rows", type=int, help="lower bound on rows (default 150,000)")
    parser.add_argument("--max-rows", type=int, help="upper bound on rows (default 200,000)")
    parser.add_argument("--target-null-share", type=float, help="per target (default 0.01)")
    parser.add_argument("--feature-null-share", type=float, help="per family (default 0.05)")
    parser.add_argument(
        "--family-null-share",
        action="append",
        default=[],
        metavar="FAMILY=SHARE",
        help="threshold for one family (repeatable), e.g. corr=0.6",
    )
    parser.add_argument(
        "--allow-leak",
        action="append",
        default=[],
        metavar="COLUMN",
        help="feature column that looks like a target but is not (repeatable)",
    )
    parser.add_argument("--key-start", help="earliest allowed key, ISO date (default 2000-01-01)")
    parser.add_argument("--key-end", help="keys must be before this ISO date (default 2100-01-01)")
    parser.add_argument(
        "--no-value-leak",
        action="store_true",
        help="only name-based leak detection (no value comparison with targets)",
    )
    parser.add_argument(
        "--max-footer-mb",
        type=float,
        help="refuse files whose parquet footer is larger (default 128; memory ~7.5x this)",
    )
    parser.set_defaults(handler=run)


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def thresholds_from_args(args: argparse.Namespace) -> Any:
    from bqx_assets.core.errors import ValidationError
    from bqx_assets.core.validation import Thresholds

    defaults = Thresholds()
    families: dict[str, float] = {}
    for item in args.family_null_share:
        family, sep, share = item.partition("=")
        try:
            families[family] = float(share)
        except ValueError:
            sep = ""
        if not sep or not family:
            raise ValidationError(f"--family-null-share {item!r}: expected FAMILY=SHARE")
    try:
        key_range = (
            _date(args.key_start) if args.key_start else defaults.key_range[0],
            _date(args.key_end) if args.key_end else defaults.key_range[1],
        )
    except ValueError as exc:
        raise ValidationError(f"--key-start/--key-end: {exc}") from None
    return Thresholds(
        min_rows=defaults.min_rows if args.min_rows is None else args.min_rows,
        max_rows=defaults.max_rows if args.max_rows is None else args.max_rows,
        target_null_share=defaults.target_null_share
        if args.target_null_share is None
        else args.target_null_share,
        feature_null_share=defaults.feature_null_share
        if args.feature_null_share is None
        else args.feature_null_share,
        family_null_share=families,
        leak_allow=tuple(args.allow_leak),
        key_range=key_range,
        value_leak=not args.no_value_leak,
        max_footer_bytes=defaults.max_footer_bytes
        if args.max_footer_mb is None
        else int(args.max_footer_mb * 2**20),
    )


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from bqx_assets.cli.commands import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.errors import ValidationError
    from bqx_assets.core.validation import Expectation, validate_training_file

    catalog = Catalog.load(args.catalog)
    catalog.check_pair(args.pair)
    if args.spine_rows is not None:
        spine_rows = args.spine_rows
    elif args.targets:
        try:
            spine_rows = pq.read_metadata(args.targets).num_rows
        except OSError as exc:
            raise ValidationError(
                f"pair {args.pair}: cannot read targets {args.targets}: {exc}"
            ) from None
    else:
        raise ValidationError(
            f"pair {args.pair}: give --spine-rows N or --targets FILE (the rows to expect)"
        )
    thresholds = thresholds_from_args(args)
    report = validate_training_file(
        args.file, Expectation.for_pair(catalog, args.pair, spine_rows), thresholds
    )
    print(report.summary())
    emit(report.to_dict())
    return 0 if report.passed else 1
