"""What each gate check checks, in the words the Dagster UI shows, with the thresholds' numbers."""

from __future__ import annotations

from collections.abc import Mapping

from bqx_assets.core.gate.thresholds import DEFAULTS, Thresholds


def _pct(share: float) -> str:
    return f"{share * 100:g}%"


def _points(share: float) -> str:
    points = f"{share * 100:g}"
    return f"{points} point" if points == "1" else f"{points} points"


def _null_expectations(th: Thresholds) -> str:
    """`{family} {expected share}% + {tolerance} points` for each family the thresholds name,
    then the same for every other family."""
    named = dict.fromkeys([*th.family_null_share, *th.family_null_tolerance])
    parts = [
        f"{f} {_pct(th.expected_null_share(f))} + {_points(th.null_tolerance(f))}" for f in named
    ]
    other = f"{_pct(th.feature_null_share)} + {_points(th.null_share_tolerance)}"
    return ", ".join([*parts, f"others {other}"])


def _coverage_floors(th: Thresholds) -> str:
    floors = [f"{f} {_pct(v)}" for f, v in th.family_min_coverage.items()]
    return ", ".join([_pct(th.min_coverage), *floors])


def describe_checks(th: Thresholds) -> dict[str, str]:
    """Each check's description under `th`, in the order the checks run."""
    return {
        "row_count": (
            "Rows equal the rows of the pair's targets table (the spine): no fan-out from "
            "duplicate keys, no loss; and within the configured bounds (production "
            f"{th.min_rows:,}-{th.max_rows:,})."
        ),
        "column_count": (
            "Columns equal interval_time + the 49 targets + the catalog's features for the pair; "
            "missing, unexpected and duplicate columns are listed by name."
        ),
        "target_horizons": (
            "All 49 targets (7 windows x 7 horizons) are present, floating point, and each "
            f"target's null share is under its threshold (production {_pct(th.target_null_share)})."
        ),
        "null_completeness": (
            "Null share per feature family (every null cell of its columns over the whole file) "
            f"at most its expected share plus a tolerance (production: {_null_expectations(th)}) "
            "and no feature column 100% null; reports per family the nulls the merge made (keys "
            "a table has no row for), the nulls the sources had, and the newest day's."
        ),
        "key_integrity": (
            "interval_time is timestamp[us, tz=UTC], has no nulls, is unique and strictly "
            "increasing, and lies within the run's training window (where it is open: "
            f"{th.key_start.date()} to {th.key_end.date()}; catches 1970 keys from a unit bug)."
        ),
        "no_target_leakage": (
            "No feature column is named like a target (target_*, base_bqx__target_45) or carries "
            "a target's values row by row, unless allow-listed."
        ),
        "table_coverage": (
            "From the coverage the merge records in the footer: every feature table covers at "
            f"least its family's expected share of the spine's keys (production: "
            f"{_coverage_floors(th)}; catches 1970 keys, keys in the wrong unit) and misses at "
            f"most {th.tail_tolerance_rows} of the spine's last minutes that it had on the "
            "previous trading day (the same minute of the latest earlier day that has it: a "
            "table with trading hours may stop at its close; catches tables cut at their own "
            "LIMIT, stale sources); names the tables and the newest minutes they miss."
        ),
        "newest_rows": (
            "The newest day of the file (its last trading day, however far it goes) is not more "
            "null than the same minutes of the previous trading day: per family, the share of "
            "null values in the rows the tables have stays within "
            f"{_points(th.newest_null_tolerance)} of that share at those minutes (nulls that "
            "follow the clock, such as an ETF's hours, are expected; the first team's tail was "
            "67% null)."
        ),
        "profile_drift": (
            "Against the pair's last published profile: no family's null share moves by more "
            f"than {_points(th.drift_family_null_share)} or {_pct(th.drift_relative)} of itself "
            f"(a column's: {_points(th.drift_column_null_share)} or {_pct(th.drift_relative)}), "
            "no column becomes constant or all-null, no column's magnitude grows or shrinks "
            f"more than {th.drift_range_factor:g}x, no column changes type. The first build of a "
            "pair is judged by the expectations of null_completeness instead."
        ),
    }


CHECK_DESCRIPTIONS: Mapping[str, str] = describe_checks(DEFAULTS)
"""Every check's description at production's thresholds, in the order the checks run."""
