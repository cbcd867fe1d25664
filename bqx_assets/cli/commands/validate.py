"""`bqx validate FILE --pair P [--profile-history PROFILE]`: the gate checks, outside Dagster."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from bqx_assets.core.gate.thresholds import (
    THRESHOLD_FIELDS,
    UNIT_TEXT,
    ThresholdField,
    Thresholds,
)

_METAVARS = {"rows": "ROWS", "share": "SHARE", "factor": "FACTOR", "names": "N", "time": "TIME",
             "column": "COLUMN"}  # fmt: skip


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
    parser.add_argument(
        "--profile-history",
        metavar="PROFILE",
        help="profile of the pair's last published file (training_{pair}.profile.parquet): "
        "the reference of profile_drift; without it the build is judged as a first build",
    )
    parser.add_argument(
        "--profile-out", metavar="PATH", help="write this file's profile (parquet) to PATH"
    )
    add_threshold_arguments(parser)
    parser.set_defaults(handler=run)


def _default_text(f: ThresholdField) -> str:
    value = f.default
    if f.kind == "bool":
        return "on" if value else "off"
    if f.kind == "per_family":
        return " ".join(f"{k}={v:g}" for k, v in value.items()) or "none"
    if f.kind == "names":
        return ", ".join(value) or "none"
    if f.kind == "time":
        return value.date().isoformat() if value.time() == value.min.time() else value.isoformat()
    if f.knob.scale != 1:
        return f"{value / f.knob.scale:g}"
    return f"{value:,}" if f.kind == "int" else f"{value:g}"


def _help(f: ThresholdField) -> str:
    """The field's line, its unit and its default, with the other fields named by their flags."""
    knob = f.knob
    text = knob.help
    for other in sorted(THRESHOLD_FIELDS, key=lambda o: -len(o.name)):
        text = re.sub(rf"\b{other.name}\b", other.flag, text)
    unit = knob.flag_unit or UNIT_TEXT[knob.unit]
    more = "; repeatable" if f.kind in ("per_family", "names") else ""
    return f"{text} ({unit}; default {_default_text(f)}{more})".replace("%", "%%")


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `Thresholds`: its name, help, unit and default come from the
    field (core/gate/thresholds.py); a flag not given leaves the field at its default."""
    group = parser.add_argument_group("gate thresholds (defaults: production's)")
    for f in THRESHOLD_FIELDS:
        knob, text = f.knob, _help(f)
        metavar = knob.flag_unit.upper() if knob.flag_unit else _METAVARS.get(knob.unit)
        if f.kind == "bool":
            group.add_argument(
                f.flag, dest=f.name, action=argparse.BooleanOptionalAction, help=text
            )
        elif f.kind in ("per_family", "names"):
            metavar = "FAMILY=SHARE" if f.kind == "per_family" else metavar
            group.add_argument(f.flag, dest=f.name, action="append", metavar=metavar, help=text)
        elif f.kind == "time":
            group.add_argument(f.flag, dest=f.name, metavar=metavar, help=text)
        else:
            number = int if f.kind == "int" and knob.scale == 1 else float
            group.add_argument(f.flag, dest=f.name, type=number, metavar=metavar, help=text)


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    """The thresholds the flags give; each flag not given keeps its field's default."""
    from bqx_assets.core.errors import ValidationError
    from bqx_assets.core.gate.thresholds import parse_time

    values: dict[str, Any] = {}
    for f in THRESHOLD_FIELDS:
        given = getattr(args, f.name, None)
        if given is None:
            continue
        if f.kind == "per_family":
            values[f.name] = dict(f.parse_pair(item) for item in given)
        elif f.kind == "time":
            try:
                values[f.name] = parse_time(given)
            except ValueError as exc:
                raise ValidationError(f"{f.flag} {given!r}: {exc}") from None
        elif f.knob.scale != 1:
            values[f.name] = int(given * f.knob.scale)
        else:
            values[f.name] = given
    return Thresholds.from_dict(values)


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.errors import ValidationError
    from bqx_assets.core.gate.profile import Profile
    from bqx_assets.core.gate.report import Expectation
    from bqx_assets.core.gate.validate import validate_training_file

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
