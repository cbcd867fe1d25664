"""`bqx validate FILE --pair P [--profile-history PROFILE]`: the gate checks, outside Dagster."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="run the gate checks on a training file (exit 0 pass, 1 fail)",
        description=(
            "Check a training file from its parquet footer, the merge's coverage record and its "
            "key column only: rows, columns, targets, nulls per family, keys, target leakage, "
            "table coverage, the newest rows, drift from the pair's last published profile. "
            "Prints a report, then one JSON line."
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
    parser.add_argument(
        "--feature-null-share",
        type=float,
        help="expected null share of families not given by --family-null-share (default 0.024)",
    )
    parser.add_argument(
        "--family-null-share",
        action="append",
        default=[],
        metavar="FAMILY=SHARE",
        help="expected null share of one family (repeatable), e.g. corr=0.53; replaces the "
        "production defaults (corr 0.53, tri 0.24, cov 0.10)",
    )
    parser.add_argument(
        "--null-tolerance", type=float, help="allowed excess over the expected share (0.05)"
    )
    parser.add_argument(
        "--profile-history",
        metavar="PROFILE",
        help="profile of the pair's last published file (training_{pair}.profile.parquet): "
        "the reference of profile_drift; without it the build is judged as a first build",
    )
    parser.add_argument(
        "--profile-out", metavar="PATH", help="write this file's profile (parquet) to PATH"
    )
    parser.add_argument(
        "--no-require-coverage",
        action="store_true",
        help="accept a file without the merge's coverage record (not written by bqx merge)",
    )
    parser.add_argument(
        "--min-coverage", type=float, help="share of the spine every table covers (0.5)"
    )
    parser.add_argument(
        "--tail-tolerance-rows",
        type=int,
        help="last spine minutes a table may miss that it had the day before (2)",
    )
    parser.add_argument(
        "--newest-null-tolerance",
        type=float,
        help="allowed excess null share of the newest day over the whole file (0.10)",
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


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def thresholds_from_args(args: argparse.Namespace) -> Any:
    from bqx_assets.core.errors import ValidationError
    from bqx_assets.core.gate.validation import Thresholds

    defaults = Thresholds()
    families: dict[str, float] = {} if args.family_null_share else dict(defaults.family_null_share)
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
        null_share_tolerance=_or(args.null_tolerance, defaults.null_share_tolerance),
        require_coverage=not args.no_require_coverage,
        min_coverage=_or(args.min_coverage, defaults.min_coverage),
        tail_tolerance_rows=_or(args.tail_tolerance_rows, defaults.tail_tolerance_rows),
        newest_null_tolerance=_or(args.newest_null_tolerance, defaults.newest_null_tolerance),
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
    from bqx_assets.core.gate.profile import Profile
    from bqx_assets.core.gate.validation import Expectation, validate_training_file

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
    history = None
    if args.profile_history:
        try:
            data = Path(args.profile_history).read_bytes()
        except OSError as exc:
            raise ValidationError(
                f"pair {args.pair}: cannot read the profile {args.profile_history}: {exc}"
            ) from None
        history = Profile.from_bytes(data, args.profile_history)
        if history.pair != args.pair:
            raise ValidationError(
                f"{args.profile_history} is the profile of {history.pair}, not {args.pair}"
            )
    report = validate_training_file(
        args.file, Expectation.for_pair(catalog, args.pair, spine_rows), thresholds, history
    )
    if args.profile_out and report.profile is not None:
        Path(args.profile_out).write_bytes(report.profile.to_bytes())
    print(report.summary())
    emit(report.to_dict())
    return 0 if report.passed else 1
