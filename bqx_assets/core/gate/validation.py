"""Gate checks of a training file, computed from its parquet footer and its key column only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.catalog import FAMILY_ORDER, Catalog
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.profile import UNEXPECTED_FAMILY, Profile, build_profile
from bqx_assets.core.keys import EXAMPLES, duplicated
from bqx_assets.core.keys import int64s as _int64s
from bqx_assets.core.layout import KEY, KEY_TZ, KEY_UNIT, PREFIX_SEPARATOR
from bqx_assets.core.merge.coverage import Coverage, TableCoverage
from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
from bqx_assets.core.warehouse import DateRange

CHECK_NAMES: tuple[str, ...] = (
    "row_count",
    "column_count",
    "target_horizons",
    "null_completeness",
    "key_integrity",
    "no_target_leakage",
    "table_coverage",
    "newest_rows",
    "profile_drift",
)

CHECK_DESCRIPTIONS: Mapping[str, str] = {
    "row_count": (
        "Rows equal the rows of the pair's targets table (the spine): no fan-out from duplicate "
        "keys, no loss; and within the configured bounds (production 150,000-200,000)."
    ),
    "column_count": (
        "Columns equal interval_time + the 49 targets + the catalog's features for the pair; "
        "missing, unexpected and duplicate columns are listed by name."
    ),
    "target_horizons": (
        "All 49 targets (7 windows x 7 horizons) are present, floating point, and each target's "
        "null share is under its threshold (production 1%)."
    ),
    "null_completeness": (
        "Null share per feature family at most its expected share plus a tolerance (production: "
        "corr 53%, tri 24%, cov 10%, others 2.4%; +5 points) and no feature column 100% null; "
        "reports per family the nulls the merge made (keys a table has no row for) and the "
        "nulls the sources had."
    ),
    "key_integrity": (
        "interval_time is timestamp[us, tz=UTC], has no nulls, is unique and strictly increasing, "
        "and lies within the configured date range (catches 1970 keys from a unit bug)."
    ),
    "no_target_leakage": (
        "No feature column is named like a target (target_*, base_bqx__target_45) or carries a "
        "target's values row by row, unless allow-listed."
    ),
    "table_coverage": (
        "From the coverage the merge records in the footer: every feature table covers at least "
        "its family's expected share of the spine's keys (catches 1970 keys, keys in the wrong "
        "unit) and does not stop before the spine's end by more than its own longest gap plus a "
        "tolerance (catches tables cut at their own LIMIT, stale sources); names the tables and "
        "the newest minutes they miss."
    ),
    "newest_rows": (
        "The newest day of the file (its last trading day) is not more null than the whole file: "
        "per family, the null share of the values the tables have in the newest rows stays "
        "within a tolerance of the whole file's (the first team's tail was 67% null)."
    ),
    "profile_drift": (
        "Against the pair's last published profile: no family's or column's null share moves by "
        "more than its tolerance, no column becomes constant or all-null, no column's magnitude "
        "jumps by an order of magnitude, no column changes type. The first build of a pair is "
        "judged by the expectations "
        "of null_completeness instead."
    ),
}

PRODUCTION_NULL_SHARES: Mapping[str, float] = {"corr": 0.53, "tri": 0.24, "cov": 0.10}
"""Null share of the families that are null by construction in production (DOMAIN): ETF trading
hours, late-starting sources, cross-pair feed outages."""
PRODUCTION_OTHER_NULL_SHARE = 0.024
"""Null share of every other family in production (rolling-window warm-ups): what is left of
the 12.4% overall once corr, tri and cov are counted."""
PRODUCTION_NULL_TOLERANCE: Mapping[str, float] = {"corr": 0.30, "tri": 0.15}
"""Per-family tolerances wider than the default: corr's share depends on where the spine's ends
fall in the ETF's trading hours (80% null for a spine of one morning), one tri source alone may
start 39% of the way in."""
PRODUCTION_MIN_COVERAGE: Mapping[str, float] = {"corr": 0.10}
"""Share of the spine's keys a table of these families has at least: corr tables have rows only
while their ETF quotes (about half of the FX minutes; a fifth of a spine of one morning)."""

_TARGET_NAME = re.compile(r"^target_bqx(?P<window>\d+)_h(?P<horizon>\d+)$")
# A target token anywhere in a feature name: `target_45`, `base_bqx__target_45`, `x_target`.
_LEAK_NAME = re.compile(r"(?:^|_)target(?:_|$)")
_MAX_VALUE_COMPARISONS = 100
"""Feature/target pairs with equal footer min/max compared row by row, at most (bounded cost)."""


@dataclass(frozen=True)
class Thresholds:
    """What the gate accepts; the defaults are the production values."""

    min_rows: int = 150_000
    max_rows: int = 200_000
    target_null_share: float = 0.01
    feature_null_share: float = PRODUCTION_OTHER_NULL_SHARE
    """Expected null share (null cells / cells of the family) of a family not in
    `family_null_share`."""
    family_null_share: Mapping[str, float] = field(
        default_factory=lambda: dict(PRODUCTION_NULL_SHARES)
    )
    """Expected null share per family (production's by default)."""
    null_share_tolerance: float = 0.05
    """A family may be this much (absolute) more null than expected."""
    family_null_tolerance: Mapping[str, float] = field(
        default_factory=lambda: dict(PRODUCTION_NULL_TOLERANCE)
    )
    """Per-family overrides of `null_share_tolerance`."""
    require_coverage: bool = True
    """Fail table_coverage when the file has no coverage record (it was not written by the
    merge)."""
    min_coverage: float = 0.5
    """Share of the spine's keys every feature table covers at least (tri sources start late: up
    to 39% of the spine)."""
    family_min_coverage: Mapping[str, float] = field(
        default_factory=lambda: dict(PRODUCTION_MIN_COVERAGE)
    )
    """Per-family overrides of `min_coverage`."""
    tail_tolerance_rows: int = 2
    """A table may miss this many of the spine's last minutes that it had the day before (a
    table with trading hours is not expected to have rows after they close)."""
    newest_null_tolerance: float = 0.10
    """The newest day's null share of the values tables have may exceed the whole file's by this
    much (absolute), per family."""
    drift_family_null_share: float = 0.005
    """A family's null share may move this much (absolute) from the last published profile, or
    `drift_relative` of it, whichever is larger."""
    drift_column_null_share: float = 0.01
    """A column's null share may move this much (absolute), or `drift_relative` of it."""
    drift_relative: float = 0.25
    """Relative part of the drift tolerances: a null share that doubles always moves too far,
    while one more day of data moves production's shares by about 1% of themselves."""
    drift_range_factor: float = 10.0
    """A column's magnitude (the larger of |min| and |max|) may grow or shrink by this factor from
    the last published profile: a unit change (x1000, a percentage for a share) moves it by
    orders of magnitude, while a day more of a rolling statistic moved it by at most 2.7x on
    the demo warehouses (and a short series' range, which is no scale, by 12x)."""
    leak_allow: tuple[str, ...] = ()
    """Feature columns that look like targets but are known not to be."""
    key_range: tuple[datetime, datetime] = (
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
    )
    """Keys must lie in [start, end): a unit bug that turns keys into 1970 dates falls outside."""
    value_leak: bool = True
    """Also flag float features equal to a target row by row (a copied target): nominated by equal
    footer min/max in one row group, then compared on that row group's values."""
    max_footer_bytes: int = 128 * 2**20
    """Larger footers are refused before parsing: pyarrow holds ~7.5 bytes per footer byte (a
    106 MB footer, 17,031 columns x 44 row groups, parses to ~800 MB), so this keeps validation
    under 1 GiB. The first team's layout, 347 row groups, has a ~820 MB footer (6 GB parsed)."""
    max_names: int = 20
    """At most this many offending names per list in check metadata (counts are always full)."""

    def within(self, window: DateRange) -> Thresholds:
        """These thresholds with keys held to `window` (a run's training window) where it is
        bounded."""
        start, end = self.key_range
        return replace(self, key_range=(window.start or start, window.end or end))

    def expected_null_share(self, family: str) -> float:
        return self.family_null_share.get(family, self.feature_null_share)

    def null_tolerance(self, family: str) -> float:
        return self.family_null_tolerance.get(family, self.null_share_tolerance)

    def null_threshold(self, family: str) -> float:
        return self.expected_null_share(family) + self.null_tolerance(family)

    def coverage_floor(self, family: str) -> float:
        return self.family_min_coverage.get(family, self.min_coverage)

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_rows": self.min_rows,
            "max_rows": self.max_rows,
            "target_null_share": self.target_null_share,
            "feature_null_share": self.feature_null_share,
            "family_null_share": dict(self.family_null_share),
            "null_share_tolerance": self.null_share_tolerance,
            "family_null_tolerance": dict(self.family_null_tolerance),
            "require_coverage": self.require_coverage,
            "min_coverage": self.min_coverage,
            "family_min_coverage": dict(self.family_min_coverage),
            "tail_tolerance_rows": self.tail_tolerance_rows,
            "newest_null_tolerance": self.newest_null_tolerance,
            "drift_family_null_share": self.drift_family_null_share,
            "drift_column_null_share": self.drift_column_null_share,
            "drift_relative": self.drift_relative,
            "drift_range_factor": self.drift_range_factor,
            "leak_allow": list(self.leak_allow),
            "key_range": [self.key_range[0].isoformat(), self.key_range[1].isoformat()],
            "value_leak": self.value_leak,
            "max_footer_bytes": self.max_footer_bytes,
        }


@dataclass(frozen=True)
class Expectation:
    """What the pair's training file must contain, from the catalog and the spine."""

    pair: str
    spine_rows: int
    columns: tuple[str, ...]
    targets: tuple[str, ...]
    family_of: Mapping[str, str]
    table_family: Mapping[str, str] = field(default_factory=dict)
    """Family of each feature table (coverage records name tables)."""

    @classmethod
    def for_pair(cls, catalog: Catalog, pair: str, spine_rows: int) -> Expectation:
        features = catalog.feature_columns(pair)
        return cls(
            pair=pair,
            spine_rows=spine_rows,
            columns=catalog.training_columns(pair),
            targets=catalog.targets[catalog.check_pair(pair)].targets,
            family_of={f.name: f.family for f in features},
            table_family={t.name: t.family for t in catalog.tables_for(pair)},
        )


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one gate check: small, JSON-able metadata for people."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class FamilyNulls:
    """Columns and null share of one feature family in a training file."""

    family: str
    columns: int
    null_share: float
    all_null_columns: int
    threshold: float

    @property
    def passed(self) -> bool:
        return self.all_null_columns == 0 and self.null_share <= self.threshold


@dataclass(frozen=True)
class ValidationReport:
    """Every gate check of one training file, with the cost of checking it."""

    pair: str
    path: str
    rows: int
    columns: int
    outcomes: tuple[CheckOutcome, ...]
    seconds: float
    peak_rss_bytes: int
    families: tuple[FamilyNulls, ...] = ()
    profile: Profile | None = None
    """The file's profile (footer statistics and coverage): stored when the file is published,
    the reference of the pair's next build."""
    row_groups: int = 0
    """The footer holds columns x row groups chunk entries: what validation time and memory
    grow with (about 1 KiB and 2-4 us each with pyarrow)."""

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if not o.passed)

    def outcome(self, name: str) -> CheckOutcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def family_table_markdown(self) -> str:
        """Per family: columns, null share (split into nulls the merge made and nulls the
        sources had), the newest day's null share, all-null columns, threshold and verdict."""
        lines = [
            "| family | columns | null share | merge-made | in source | newest day "
            "| all-null columns | threshold | ok |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        profiles = {f.family: f for f in self.profile.families} if self.profile else {}
        for f in self.families:
            p = profiles.get(f.family)
            made = f"{p.merge_null_share:.2%}" if p else "-"
            source = f"{p.source_null_share:.2%}" if p else "-"
            newest = f"{p.newest_null_share:.2%}" if p and p.newest_null_share is not None else "-"
            lines.append(
                f"| {f.family} | {f.columns:,} | {f.null_share:.2%} | {made} | {source} "
                f"| {newest} | {f.all_null_columns} | {f.threshold:.1%} "
                f"| {'yes' if f.passed else 'NO'} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "path": self.path,
            "passed": self.passed,
            "rows": self.rows,
            "columns": self.columns,
            "row_groups": self.row_groups,
            "failed": list(self.failed),
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "checks": {o.name: {"passed": o.passed, "metadata": o.metadata} for o in self.outcomes},
        }

    def summary(self) -> str:
        """A readable report: one line per check, the reasons of failures, the family table."""
        verdict = "PASSED" if self.passed else f"FAILED ({', '.join(self.failed)})"
        lines = [
            f"{self.path}: pair {self.pair}, {self.rows:,} rows x {self.columns:,} columns "
            f"in {self.row_groups} row groups: "
            f"{verdict} in {self.seconds:.2f} s, peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB",
        ]
        for o in self.outcomes:
            lines.append(f"  [{'pass' if o.passed else 'FAIL'}] {o.name}: {o.metadata['summary']}")
        if self.families:
            lines += ["", self.family_table_markdown()]
        return "\n".join(lines)


# -- footer statistics ----------------------------------------------------------------------
@dataclass
class _ColumnStats:
    """Per top-level column: null count over the file and min/max of float columns."""

    names: list[str]
    types: list[pa.DataType]
    nulls: np.ndarray  # int64; -1 where a chunk has no null count statistics
    last_group_nulls: np.ndarray  # int64 nulls in the last row group (tail completeness)
    last_group_rows: int
    minmax: dict[int, tuple[float, float]]  # float columns: min/max in the sample row group
    sample_group: int
    mins: np.ndarray  # float64 min over all row groups of numeric columns, NaN where unknown
    maxs: np.ndarray


def _footer_stats(pf: pq.ParquetFile, path: Path, want_minmax: set[int]) -> _ColumnStats:
    """Aggregate column chunk null counts and min/max over all row groups.

    This walk is the whole cost of validating a 17,000-column file (about 1.5 us per column
    chunk per statistic). The merge writes a row group per month and per week of the newest
    month (~11 at production length), each a different stretch of the series, so the profile's
    ranges come from every one of them (a sample would miss months). The leak check's min/max
    come from the middle row group, where a copied target has the same min/max as its source.
    """
    meta = pf.metadata
    schema = pf.schema_arrow
    names = schema.names
    n = len(names)
    if meta.num_columns != n:
        # Nested columns would map several leaves to one field; the training file is flat.
        raise ValidationError(
            f"{path}: {meta.num_columns} parquet leaf columns for {n} fields; "
            "a training file has flat columns only"
        )
    # One list comprehension per row group, None where a chunk has no null count: half the
    # time of a loop with per-chunk branches and numpy item assignments.
    total = np.zeros(n, dtype=np.float64)  # exact: null counts stay far below 2**53
    last = np.zeros(n, dtype=np.float64)
    groups = meta.num_row_groups
    for g in range(groups):
        column = meta.row_group(g).column
        counts = np.array(
            [s.null_count if (s := column(j).statistics) is not None else None for j in range(n)],
            dtype=np.float64,
        )
        total += counts
        if g == groups - 1:
            last = counts
    missing = np.isnan(total)
    nulls = np.where(missing, -1, total).astype(np.int64)
    last_nulls = np.nan_to_num(last).astype(np.int64)
    last_rows = meta.row_group(groups - 1).num_rows if groups else 0
    numeric = np.asarray(
        [
            j
            for j, t in enumerate(schema.types)
            if pa.types.is_floating(t) or pa.types.is_integer(t)
        ],
        dtype=np.int64,
    )
    mins = np.full(n, np.nan)
    maxs = np.full(n, np.nan)
    minmax: dict[int, tuple[float, float]] = {}
    # Every row group: a row group is a month or a day (core/merge.py), so a sample of them
    # would miss the ranges of the others.
    for g in range(groups):
        column = meta.row_group(g).column
        # One (min, max) per chunk, NaN where a chunk has none (all null). Holding the chunks'
        # statistics objects instead would hold their metadata: ~100 MB at 17K columns.
        nan = (np.nan, np.nan)
        ranges = np.array(
            [
                (s.min, s.max)
                if (s := column(int(j)).statistics) is not None and s.has_min_max
                else nan
                for j in numeric
            ],
            dtype=np.float64,
        ).reshape(-1, 2)
        lo, hi = ranges[:, 0], ranges[:, 1]
        mins[numeric] = np.fmin(mins[numeric], lo)
        maxs[numeric] = np.fmax(maxs[numeric], hi)
        if g == groups // 2 and want_minmax:
            for k, j in enumerate(numeric):
                if int(j) in want_minmax and not np.isnan(lo[k]):
                    minmax[int(j)] = (float(lo[k]), float(hi[k]))
    return _ColumnStats(
        names, list(schema.types), nulls, last_nulls, last_rows, minmax, groups // 2, mins, maxs
    )


def _fill_missing_nulls(pf: pq.ParquetFile, stats: _ColumnStats) -> int:
    """Count nulls by reading the data of columns whose footer lacks null counts, one column at a
    time (bounded memory); returns how many columns had to be read."""
    todo = np.flatnonzero(stats.nulls < 0)
    for j in todo:
        column = pf.read(columns=[stats.names[j]]).column(0)
        stats.nulls[j] = column.null_count
    return len(todo)


# -- the checks -----------------------------------------------------------------------------
def _cap(names: list[str] | tuple[str, ...], limit: int) -> list[str]:
    return list(names[:limit])


def _share(nulls: int, cells: int) -> float:
    return nulls / cells if cells else 0.0


def _row_count(rows: int, exp: Expectation, th: Thresholds) -> CheckOutcome:
    in_bounds = th.min_rows <= rows <= th.max_rows
    passed = rows == exp.spine_rows and in_bounds
    if rows == exp.spine_rows:
        why = f"{rows:,} rows, as the spine"
    elif rows > exp.spine_rows:
        extra = rows - exp.spine_rows
        why = f"{rows:,} rows, {extra:,} more than the spine's {exp.spine_rows:,} (fan-out)"
    else:
        why = f"{rows:,} rows, {exp.spine_rows - rows:,} fewer than the spine's {exp.spine_rows:,}"
    if not in_bounds:
        why += f"; outside the bounds {th.min_rows:,}-{th.max_rows:,}"
    return CheckOutcome(
        "row_count",
        passed,
        CHECK_DESCRIPTIONS["row_count"],
        {
            "summary": why,
            "actual": rows,
            "expected": exp.spine_rows,
            "threshold": {"min_rows": th.min_rows, "max_rows": th.max_rows},
            "difference": rows - exp.spine_rows,
        },
    )


def _column_count(names: list[str], exp: Expectation, th: Thresholds) -> CheckOutcome:
    expected = set(exp.columns)
    actual = set(names)
    missing = [c for c in exp.columns if c not in actual]
    unexpected = [c for c in names if c not in expected]
    seen: set[str] = set()
    duplicates = [c for c in names if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    passed = not missing and not unexpected and not duplicates and len(names) == len(exp.columns)
    in_order = tuple(names) == exp.columns
    parts = [f"{len(names):,} columns, expected {len(exp.columns):,}"]
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if duplicates:
        parts.append(f"{len(duplicates)} duplicated (e.g. {', '.join(duplicates[:3])})")
    if passed and not in_order:
        parts.append("not in catalog order")
    return CheckOutcome(
        "column_count",
        passed,
        CHECK_DESCRIPTIONS["column_count"],
        {
            "summary": "; ".join(parts),
            "actual": len(names),
            "expected": len(exp.columns),
            "threshold": "exact set of names",
            "missing_count": len(missing),
            "missing": _cap(missing, th.max_names),
            "unexpected_count": len(unexpected),
            "unexpected": _cap(unexpected, th.max_names),
            "duplicate_count": len(duplicates),
            "duplicates": _cap(duplicates, th.max_names),
            "in_catalog_order": in_order,
        },
    )


def _target_horizons(
    rows: int, stats: _ColumnStats, index: dict[str, int], exp: Expectation, th: Thresholds
) -> CheckOutcome:
    missing = [t for t in exp.targets if t not in index]
    not_float = {
        t: str(stats.types[index[t]])
        for t in exp.targets
        if t in index and not pa.types.is_floating(stats.types[index[t]])
    }
    shares = {t: _share(int(stats.nulls[index[t]]), rows) for t in exp.targets if t in index}
    over = {t: round(s, 6) for t, s in shares.items() if s > th.target_null_share}
    missing_horizons = sorted({int(m["horizon"]) for t in missing if (m := _TARGET_NAME.match(t))})
    missing_windows = sorted({int(m["window"]) for t in missing if (m := _TARGET_NAME.match(t))})
    passed = not missing and not not_float and not over
    ok = len(exp.targets) - len(missing) - len(not_float)
    parts = [f"{ok} of {len(exp.targets)} targets present and float"]
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}")
    if not_float:
        parts.append(f"not float: {', '.join(list(not_float)[:5])}")
    if over:
        parts.append(f"{len(over)} over {th.target_null_share:.1%} null")
    worst = max(shares.values(), default=0.0)
    parts.append(f"worst null share {worst:.2%}")
    return CheckOutcome(
        "target_horizons",
        passed,
        CHECK_DESCRIPTIONS["target_horizons"],
        {
            "summary": "; ".join(parts),
            "actual": ok,
            "expected": len(exp.targets),
            "threshold": th.target_null_share,
            "missing": _cap(missing, th.max_names),
            "missing_horizons": missing_horizons,
            "missing_windows": missing_windows,
            "not_float": dict(list(not_float.items())[: th.max_names]),
            "over_threshold": dict(sorted(over.items(), key=lambda kv: -kv[1])[: th.max_names]),
            "worst_null_share": round(worst, 6),
        },
    )


def _features(names: list[str], exp: Expectation) -> list[int]:
    """Indexes of feature columns: everything but the key and the targets, as consumers see it."""
    targets = set(exp.targets)
    return [j for j, c in enumerate(names) if c != KEY and c not in targets]


def _null_completeness(
    rows: int,
    stats: _ColumnStats,
    exp: Expectation,
    th: Thresholds,
    read_columns: int,
    profile: Profile,
) -> tuple[CheckOutcome, tuple[FamilyNulls, ...]]:
    features = _features(stats.names, exp)
    families = tuple(
        FamilyNulls(
            f.family, f.columns, f.null_share, f.all_null_columns, th.null_threshold(f.family)
        )
        for f in profile.families
    )
    frame = profile.columns
    nulls = np.asarray(frame.column("nulls").to_numpy(), dtype=np.int64)
    column_names = frame.column("column").to_pylist()
    column_families = frame.column("family").to_pylist()
    dead = np.flatnonzero(nulls >= rows) if rows else np.zeros(0, dtype=np.int64)
    all_null = [column_names[i] for i in dead]
    feature_idx = np.asarray(features, dtype=np.int64)
    total = int(nulls.sum())
    overall = _share(total, rows * len(feature_idx))
    worst: list[tuple[str, float]] = []
    if len(nulls) and rows:
        top = np.argsort(-nulls, kind="stable")[:10]
        worst = [(column_names[i], round(int(nulls[i]) / rows, 6)) for i in top]
    last = stats.last_group_nulls[feature_idx].sum() if len(feature_idx) else 0
    tail_share = _share(int(last), stats.last_group_rows * len(feature_idx))
    over = {f.family: round(f.null_share, 6) for f in families if f.null_share > f.threshold}
    by_family_dead: dict[str, int] = {}
    for i in dead:
        by_family_dead[column_families[i]] = by_family_dead.get(column_families[i], 0) + 1
    passed = not over and not all_null
    parts = [f"{len(feature_idx):,} features, {overall:.2%} null"]
    if over:
        parts.append(
            "families over expectation: "
            + ", ".join(
                f"{k} {v:.1%} > {th.expected_null_share(k):.1%} + {th.null_tolerance(k):.0%}"
                for k, v in over.items()
            )
        )
    if all_null:
        parts.append(
            f"{len(all_null)} columns 100% null ("
            + ", ".join(f"{k} {v}" for k, v in by_family_dead.items())
            + f", e.g. {', '.join(all_null[:3])})"
        )
    metadata = {
        "summary": "; ".join(parts),
        "actual": round(overall, 6),
        "expected": "every family's null share <= its expected share + tolerance; no feature "
        "column 100% null",
        "threshold": {
            "expected_null_share": {f.family: th.expected_null_share(f.family) for f in families},
            "tolerance": {f.family: th.null_tolerance(f.family) for f in families},
        },
        "families": {
            f.family: {
                "columns": f.columns,
                "null_share": round(f.null_share, 6),
                "merge_null_share": round(f.merge_null_share, 6),
                "source_null_share": round(f.source_null_share, 6),
            }
            for f in profile.families
        },
        "families_over_threshold": over,
        "all_null_count": len(all_null),
        "all_null_by_family": by_family_dead,
        "all_null_columns": _cap(all_null, th.max_names),
        "worst_columns": dict(worst),
        "last_row_group_null_share": round(tail_share, 6),
        "null_counts_from": "footer statistics"
        if not read_columns
        else f"footer statistics; {read_columns} columns without statistics read",
        "merge_vs_source": "from the merge's coverage record"
        if profile.coverage is not None
        else "no coverage record: every null counted as the source's",
    }
    return (
        CheckOutcome(
            "null_completeness", passed, CHECK_DESCRIPTIONS["null_completeness"], metadata
        ),
        families,
    )


def _no_coverage(name: str, th: Thresholds, why: str) -> CheckOutcome:
    return CheckOutcome(
        name,
        not th.require_coverage,
        CHECK_DESCRIPTIONS[name],
        {
            "summary": f"no coverage record in the footer ({why})"
            + ("" if th.require_coverage else "; not required"),
            "actual": "no record",
            "expected": "the merge's coverage record",
            "threshold": {"require_coverage": th.require_coverage},
        },
    )


def _table_coverage(
    coverage: Coverage | None, rows: int, exp: Expectation, th: Thresholds
) -> CheckOutcome:
    name = "table_coverage"
    if coverage is None:
        return _no_coverage(name, th, "the file was not written by bqx merge")
    problems: dict[str, dict[str, Any]] = {}
    short: list[TableCoverage] = []
    stopped: list[TableCoverage] = []
    for t in coverage.tables:
        family = exp.table_family.get(t.table, UNEXPECTED_FAMILY)
        share = _share(t.matched, coverage.spine_rows)
        floor = th.coverage_floor(family)
        reasons = []
        if share < floor:
            short.append(t)
            reasons.append(f"covers {share:.1%} of the spine < {floor:.0%}")
        if t.tail_expected > th.tail_tolerance_rows:
            stopped.append(t)
            reasons.append(
                f"stops {t.tail_missing:,} rows before the spine's end, {t.tail_expected:,} of "
                f"them minutes it had the day before (tolerance {th.tail_tolerance_rows})"
            )
        if reasons:
            problems[t.table] = {
                "family": family,
                "why": "; ".join(reasons),
                "coverage": round(share, 6),
                "last_key": _iso(t.last_key) if t.last_key is not None else None,
                "newest_minutes_missed": coverage.newest_rows - t.newest_matched,
            }
    if rows != coverage.spine_rows:
        problems["(spine)"] = {
            "why": f"coverage record for {coverage.spine_rows:,} rows, file has {rows:,}"
        }
    worst = sorted(problems.items(), key=lambda kv: -kv[1].get("newest_minutes_missed", 0))
    if problems:
        by_family: dict[str, int] = {}
        for info in problems.values():
            by_family[info.get("family", "-")] = by_family.get(info.get("family", "-"), 0) + 1
        summary = (
            f"{len(problems)} of {len(coverage.tables)} tables short ("
            + ", ".join(f"{k} {v}" for k, v in by_family.items())
            + "): "
            + "; ".join(
                f"{k} misses {v.get('newest_minutes_missed', 0):,} of the "
                f"{coverage.newest_rows:,} newest minutes ({v['why']})"
                for k, v in worst[:3]
            )
        )
    else:
        summary = (
            f"{len(coverage.tables)} tables cover the spine "
            f"{_iso(coverage.first_key)} .. {_iso(coverage.last_key)} as expected"
        )
    return CheckOutcome(
        name,
        not problems,
        CHECK_DESCRIPTIONS[name],
        {
            "summary": summary,
            "actual": {
                "tables": len(coverage.tables),
                "short_tables": len(problems),
                "low_coverage": len(short),
                "stopped_early": len(stopped),
            },
            "expected": "every table covers its family's share and reaches the spine's end",
            "threshold": {
                "min_coverage": th.min_coverage,
                "family_min_coverage": dict(th.family_min_coverage),
                "tail_tolerance_rows": th.tail_tolerance_rows,
            },
            "newest_rows": coverage.newest_rows,
            "newest_from": _iso(coverage.newest_from),
            "tables": dict(worst[: th.max_names]),
        },
    )


def _newest_rows(
    profile: Profile, stats: _ColumnStats, exp: Expectation, th: Thresholds
) -> CheckOutcome:
    name = "newest_rows"
    coverage = profile.coverage
    if coverage is None:
        # Without the merge's record, the last row group stands for the newest rows when the
        # file has more than one.
        if stats.last_group_rows and stats.sample_group > 0:
            feature_idx = np.asarray(_features(stats.names, exp), dtype=np.int64)
            cells = stats.last_group_rows * len(feature_idx)
            tail = _share(int(stats.last_group_nulls[feature_idx].sum()), cells)
            whole = _share(
                int(np.maximum(stats.nulls[feature_idx], 0).sum()),
                profile.rows * len(feature_idx),
            )
            passed = tail <= whole + th.newest_null_tolerance
            return CheckOutcome(
                name,
                passed,
                CHECK_DESCRIPTIONS[name],
                {
                    "summary": f"last row group {tail:.2%} null vs {whole:.2%} in the whole file"
                    " (no coverage record)",
                    "actual": round(tail, 6),
                    "expected": round(whole, 6),
                    "threshold": th.newest_null_tolerance,
                },
            )
        return _no_coverage(name, th, "the newest rows cannot be told from the footer")
    over: dict[str, dict[str, float]] = {}
    shares: dict[str, dict[str, float]] = {}
    for f in profile.families:
        newest = f.newest_source_null_share or 0.0
        whole = f.whole_source_null_share or 0.0
        shares[f.family] = {
            "newest": round(newest, 6),
            "whole": round(whole, 6),
            "newest_all_nulls": round(f.newest_null_share or 0.0, 6),
        }
        if newest > whole + th.newest_null_tolerance:
            over[f.family] = shares[f.family]
    worst_tables = _newest_worst_tables(profile, coverage, set(over))
    if over:
        summary = (
            f"the newest day ({coverage.newest_rows:,} rows from {_iso(coverage.newest_from)}) is "
            "more null than the whole file: "
            + ", ".join(f"{k} {v['newest']:.1%} vs {v['whole']:.1%}" for k, v in over.items())
            + (f"; worst tables {', '.join(worst_tables[:3])}" if worst_tables else "")
        )
    else:
        summary = (
            f"newest day ({coverage.newest_rows:,} rows from {_iso(coverage.newest_from)}) within "
            f"{th.newest_null_tolerance:.0%} of the whole file in every family"
        )
    return CheckOutcome(
        name,
        not over,
        CHECK_DESCRIPTIONS[name],
        {
            "summary": summary,
            "actual": {k: v["newest"] for k, v in shares.items()},
            "expected": {k: v["whole"] for k, v in shares.items()},
            "threshold": th.newest_null_tolerance,
            "families_over": over,
            "tables": worst_tables[: th.max_names],
            "newest_rows": coverage.newest_rows,
        },
    )


def _newest_worst_tables(profile: Profile, coverage: Coverage, families: set[str]) -> list[str]:
    """Tables of `families` ordered by the null share of their values in the newest day."""
    if not families:
        return []
    family_of_table = dict(
        zip(
            profile.columns.column("table").to_pylist(),
            profile.columns.column("family").to_pylist(),
            strict=True,
        )
    )
    scored = []
    for t in coverage.tables:
        if family_of_table.get(t.table) not in families or not t.newest_matched:
            continue
        made = (coverage.newest_rows - t.newest_matched) * t.columns
        share = _share(max(sum(t.newest_nulls) - made, 0), t.newest_matched * t.columns)
        scored.append((share, t.table))
    return [f"{name} {share:.0%}" for share, name in sorted(scored, reverse=True) if share > 0]


def _profile_drift(profile: Profile, history: Profile | None, th: Thresholds) -> CheckOutcome:
    name = "profile_drift"
    threshold = {
        "family_null_share": th.drift_family_null_share,
        "column_null_share": th.drift_column_null_share,
        "relative": th.drift_relative,
        "range_factor": th.drift_range_factor,
    }
    if history is None:
        return CheckOutcome(
            name,
            True,
            CHECK_DESCRIPTIONS[name],
            {
                "summary": "first build of the pair: no published profile to compare with; "
                "judged by the expected null shares (null_completeness)",
                "actual": "no history",
                "expected": "the pair's last published profile",
                "threshold": threshold,
            },
        )
    families: dict[str, dict[str, float]] = {}
    for f in profile.families:
        before = history.family(f.family)
        if before is not None and abs(f.null_share - before.null_share) > max(
            th.drift_family_null_share, th.drift_relative * before.null_share
        ):
            families[f.family] = {
                "before": round(before.null_share, 6),
                "now": round(f.null_share, 6),
            }
    now, then = profile.columns, history.columns
    then_index = {c: i for i, c in enumerate(then.column("column").to_pylist())}
    names = now.column("column").to_pylist()
    common = [(i, then_index[c]) for i, c in enumerate(names) if c in then_index]
    a = np.asarray([i for i, _ in common], dtype=np.int64)
    b = np.asarray([j for _, j in common], dtype=np.int64)

    def values(table: pa.Table, column: str, idx: np.ndarray) -> np.ndarray:
        array = table.column(column).combine_chunks().take(pa.array(idx, pa.int64()))
        return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)

    share_now, share_then = values(now, "null_share", a), values(then, "null_share", b)
    lo_now, lo_then = values(now, "min", a), values(then, "min", b)
    hi_now, hi_then = values(now, "max", a), values(then, "max", b)
    dtype_now = now.column("dtype").to_pylist()
    dtype_then = then.column("dtype").to_pylist()
    moved = np.abs(share_now - share_then) > np.maximum(
        th.drift_column_null_share, th.drift_relative * share_then
    )
    became_null = (share_now >= 1.0) & (share_then < 1.0)
    span = hi_then - lo_then
    became_constant = (lo_now == hi_now) & (span > 0)
    scale_now = np.fmax(np.abs(lo_now), np.abs(hi_now))
    scale_then = np.fmax(np.abs(lo_then), np.abs(hi_then))
    with np.errstate(invalid="ignore"):
        jumped = (
            (scale_now > 0)
            & (scale_then > 0)
            & (
                (scale_now > th.drift_range_factor * scale_then)
                | (scale_then > th.drift_range_factor * scale_now)
            )
        )
    retyped = [
        f"{names[i]}: {dtype_then[j]} -> {dtype_now[i]}"
        for i, j in common
        if dtype_now[i] != dtype_then[j]
    ]

    def named(mask: np.ndarray) -> list[str]:
        return [names[int(a[k])] for k in np.flatnonzero(mask)]

    lists = {
        "null_share_moved": named(moved & ~became_null),
        "became_all_null": named(became_null),
        "became_constant": named(became_constant),
        "range_jumped": named(jumped & ~became_constant),
        "retyped": retyped,
    }
    parts = []
    if families:
        parts.append(
            "families' null share moved: "
            + ", ".join(f"{k} {v['before']:.1%} -> {v['now']:.1%}" for k, v in families.items())
        )
    for label, items in lists.items():
        if items:
            parts.append(f"{len(items)} columns {label.replace('_', ' ')} (e.g. {items[0]})")
    passed = not parts
    return CheckOutcome(
        name,
        passed,
        CHECK_DESCRIPTIONS[name],
        {
            "summary": "; ".join(parts)
            if parts
            else f"within tolerance of the profile of {history.created}",
            "actual": {k: len(v) for k, v in lists.items()} | {"families": len(families)},
            "expected": f"the profile published {history.created} ({history.rows:,} rows)",
            "threshold": threshold,
            "families": families,
            **{k: _cap(v, th.max_names) for k, v in lists.items()},
        },
    )


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat()


def _key_integrity(pf: pq.ParquetFile, names: list[str], th: Thresholds) -> CheckOutcome:
    expected = f"timestamp[{KEY_UNIT}, tz={KEY_TZ}], unique, strictly increasing, in key_range"
    threshold = {"key_range": [th.key_range[0].isoformat(), th.key_range[1].isoformat()]}
    if KEY not in names:
        return CheckOutcome(
            "key_integrity",
            False,
            CHECK_DESCRIPTIONS["key_integrity"],
            {
                "summary": f"no {KEY} column",
                "actual": "missing",
                "expected": expected,
                "threshold": threshold,
            },
        )
    if names.count(KEY) > 1:
        return CheckOutcome(
            "key_integrity",
            False,
            CHECK_DESCRIPTIONS["key_integrity"],
            {
                "summary": f"{KEY} appears {names.count(KEY)} times: the join key is ambiguous",
                "actual": f"{names.count(KEY)} columns",
                "expected": expected,
                "threshold": threshold,
            },
        )
    try:
        column = pf.read(columns=[KEY], use_threads=False).column(0).combine_chunks()
    except (OSError, pa.ArrowException) as exc:  # a corrupt page or a duplicated key column
        return CheckOutcome(
            "key_integrity",
            False,
            CHECK_DESCRIPTIONS["key_integrity"],
            {
                "summary": f"{KEY} unreadable: {exc}",
                "actual": "unreadable",
                "expected": expected,
                "threshold": threshold,
            },
        )
    dtype = column.type
    problems: list[str] = []
    type_ok = pa.types.is_timestamp(dtype) and dtype.unit == KEY_UNIT and dtype.tz == KEY_TZ
    if not type_ok:
        problems.append(f"type {dtype}, not timestamp[{KEY_UNIT}, tz={KEY_TZ}]")
    nulls = column.null_count
    if nulls:
        problems.append(f"{nulls:,} null keys")
    if pa.types.is_timestamp(dtype):
        # Compare as the unit the file claims: a µs value stored as ns shows up as 1970.
        keys = _int64s(pc.cast(column.drop_null(), pa.timestamp("us", tz=dtype.tz)))
    elif pa.types.is_integer(dtype):
        keys = _int64s(column.drop_null())
    else:
        keys = np.zeros(0, dtype=np.int64)
        problems.append("keys are not timestamps; order and range not checked")
    steps = np.diff(keys)
    distinct = len(np.unique(keys))
    duplicates = len(keys) - distinct
    non_increasing = int((steps <= 0).sum())
    if duplicates:
        problems.append(f"{duplicates:,} duplicate keys ({distinct:,} distinct of {len(keys):,})")
    if non_increasing:
        problems.append(f"{non_increasing:,} keys not after the previous one")
    start_us = int(th.key_range[0].timestamp() * 1_000_000)
    end_us = int(th.key_range[1].timestamp() * 1_000_000)
    outside = (keys < start_us) | (keys >= end_us)
    out_of_range = int(outside.sum())
    if out_of_range:
        problems.append(
            f"{out_of_range:,} keys outside {th.key_range[0].date()}..{th.key_range[1].date()} "
            f"(e.g. {_iso(int(keys[outside][0]))})"
        )
    dup_examples: list[str] = []
    if duplicates:
        dup_examples = [_iso(int(v)) for v in duplicated(keys)[1][:EXAMPLES]]
    actual = {
        "type": str(dtype),
        "rows": len(column),
        "distinct": distinct,
        "duplicates": duplicates,
        "non_increasing": non_increasing,
        "nulls": nulls,
        "out_of_range": out_of_range,
        "min": _iso(int(keys.min())) if len(keys) else None,
        "max": _iso(int(keys.max())) if len(keys) else None,
    }
    metadata: dict[str, Any] = {
        "summary": "; ".join(problems)
        if problems
        else f"{len(keys):,} unique increasing keys {actual['min']} .. {actual['max']}",
        "actual": actual,
        "expected": expected,
        "threshold": threshold,
    }
    if dup_examples:
        metadata["duplicate_examples"] = dup_examples
    if out_of_range:
        metadata["out_of_range_examples"] = [_iso(int(v)) for v in np.unique(keys[outside])[:5]]
    return CheckOutcome(
        "key_integrity", not problems, CHECK_DESCRIPTIONS["key_integrity"], metadata
    )


def _looks_like_target(name: str) -> bool:
    _, sep, column = name.partition(PREFIX_SEPARATOR)
    return bool(_LEAK_NAME.search(name)) or (bool(sep) and column.startswith("target"))


def _same_values(pf: pq.ParquetFile, group: int, feature: str, target: str) -> bool:
    """True when a feature equals a target row by row (a copy, not a shifted series) in one
    row group; both columns are read from that row group only."""
    try:
        table = pf.read_row_group(group, columns=[feature, target], use_threads=False)
    except (OSError, pa.ArrowException):  # a duplicated name: column_count reports it
        return False
    a, b = table.column(0), table.column(1)
    both = len(a) - int(pc.sum(pc.or_(pc.is_null(a), pc.is_null(b))).as_py() or 0)
    equal = int(pc.sum(pc.equal(a, b)).as_py() or 0)
    return both > 0 and equal >= 0.99 * both


def _no_target_leakage(
    pf: pq.ParquetFile,
    stats: _ColumnStats,
    index: dict[str, int],
    exp: Expectation,
    th: Thresholds,
) -> CheckOutcome:
    allowed = set(th.leak_allow)
    features = [stats.names[j] for j in _features(stats.names, exp)]
    by_name = [c for c in features if c not in allowed and _looks_like_target(c)]
    by_value: dict[str, str] = {}
    compared = 0
    if th.value_leak and stats.minmax:
        fingerprints: dict[tuple[float, float], list[str]] = {}
        for t in exp.targets:
            if t in index and index[t] in stats.minmax:
                fingerprints.setdefault(stats.minmax[index[t]], []).append(t)
        for c in features:
            mm = stats.minmax.get(index[c])
            # Equal min and max only nominate a column: a target is a lead of bqx_{w}, so the
            # feature bqx_{w} shares its extremes; only row-by-row equality is a copy.
            if not mm or mm[0] >= mm[1] or mm not in fingerprints or c in allowed:
                continue
            for t in fingerprints[mm]:
                if compared >= _MAX_VALUE_COMPARISONS:
                    break
                compared += 1
                if _same_values(pf, stats.sample_group, c, t):
                    by_value[c] = t
                    break
    offenders = list(dict.fromkeys([*by_name, *by_value]))
    summary = (
        f"{len(offenders)} feature columns look like targets: {', '.join(offenders[:5])}"
        if offenders
        else f"no target-like feature among {len(features):,}"
    )
    return CheckOutcome(
        "no_target_leakage",
        not offenders,
        CHECK_DESCRIPTIONS["no_target_leakage"],
        {
            "summary": summary,
            "actual": len(offenders),
            "expected": 0,
            "threshold": {"allow_list": list(th.leak_allow), "value_based": th.value_leak},
            "by_name": _cap(by_name, th.max_names),
            "by_value": dict(list(by_value.items())[: th.max_names]),
            "value_comparisons": compared,
        },
    )


def _check_footer_size(
    path: Path | str, pair: str, limit: int, source: BinaryIO | None = None
) -> None:
    """Refuse a footer too large to parse in bounded memory, from its length in the last 8 bytes
    (a file that is not parquet is left to pyarrow's error)."""
    try:
        with nullcontext(source) if source is not None else open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < 12:
                return
            f.seek(-8, 2)
            tail = f.read(8)
    except OSError as exc:
        raise ValidationError(f"pair {pair}: cannot read {path}: {exc}") from exc
    if tail[4:] != b"PAR1":
        return
    footer = int.from_bytes(tail[:4], "little")
    if footer > limit:
        raise ValidationError(
            f"pair {pair}: {path} has a {footer / 2**20:.0f} MiB parquet footer (too many row "
            f"groups x columns); parsing it needs ~{footer * 7.5 / 2**30:.1f} GiB, over the "
            f"{limit / 2**20:.0f} MiB footer limit. Write the file with fewer row groups (the "
            "merge writes one per 262,144 rows) or raise max_footer_bytes."
        )


def validate_training_file(
    path: Path | str,
    expectation: Expectation,
    thresholds: Thresholds | None = None,
    history: Profile | None = None,
    *,
    source: BinaryIO | None = None,
) -> ValidationReport:
    """Run every gate check on a training file without loading it: footer statistics, the merge's
    coverage record and the key column only. `history` is the profile of the pair's last
    published file (None for a first build). Raises ValidationError only when the file cannot be
    read as parquet or its coverage record is corrupt. `source`: the file already opened (a
    stored object read by ranges), `path` then only names it."""
    th = thresholds or Thresholds()
    clock = Stopwatch()
    path = Path(path) if source is None else path
    _check_footer_size(path, expectation.pair, th.max_footer_bytes, source)
    try:
        pf = pq.ParquetFile(source if source is not None else path)
    except (OSError, pa.ArrowException) as exc:
        raise ValidationError(
            f"pair {expectation.pair}: cannot read {path} as parquet: {exc}"
        ) from exc
    rows = pf.metadata.num_rows
    names = pf.schema_arrow.names
    index = {c: j for j, c in enumerate(names)}
    want: set[int] = set()
    if th.value_leak:
        want = {j for j, t in enumerate(pf.schema_arrow.types) if pa.types.is_floating(t)}
    stats = _footer_stats(pf, path, want)
    read_columns = _fill_missing_nulls(pf, stats)
    try:
        coverage = Coverage.from_metadata(pf.metadata.metadata)
    except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise ValidationError(
            f"pair {expectation.pair}: {path} has a corrupt coverage record: {exc}"
        ) from exc
    profile = build_profile(
        expectation.pair,
        rows,
        names,
        stats.types,
        stats.nulls,
        stats.mins,
        stats.maxs,
        _features(names, expectation),
        expectation.family_of,
        FAMILY_ORDER,
        coverage,
    )
    null_outcome, families = _null_completeness(rows, stats, expectation, th, read_columns, profile)
    outcomes = (
        _row_count(rows, expectation, th),
        _column_count(names, expectation, th),
        _target_horizons(rows, stats, index, expectation, th),
        null_outcome,
        _key_integrity(pf, names, th),
        _no_target_leakage(pf, stats, index, expectation, th),
        _table_coverage(coverage, rows, expectation, th),
        _newest_rows(profile, stats, expectation, th),
        _profile_drift(profile, history, th),
    )
    return ValidationReport(
        pair=expectation.pair,
        path=str(path),
        rows=rows,
        columns=len(names),
        outcomes=outcomes,
        seconds=clock.seconds,
        peak_rss_bytes=peak_rss_bytes(),
        families=families,
        profile=profile,
        row_groups=pf.metadata.num_row_groups,
    )
