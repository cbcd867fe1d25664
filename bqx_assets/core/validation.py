"""Gate checks of a training file, computed from its parquet footer and its key column only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.keys import EXAMPLES, duplicated
from bqx_assets.core.keys import int64s as _int64s
from bqx_assets.core.layout import KEY, KEY_TZ, KEY_UNIT, PREFIX_SEPARATOR
from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes

CHECK_NAMES: tuple[str, ...] = (
    "row_count",
    "column_count",
    "target_horizons",
    "null_completeness",
    "key_integrity",
    "no_target_leakage",
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
        "Null share per feature family under its threshold (production 5%) and no feature column "
        "100% null; reports per family the null share, the worst and the all-null columns."
    ),
    "key_integrity": (
        "interval_time is timestamp[us, tz=UTC], has no nulls, is unique and strictly increasing, "
        "and lies within the configured date range (catches 1970 keys from a unit bug)."
    ),
    "no_target_leakage": (
        "No feature column is named like a target (target_*, base_bqx__target_45) or carries a "
        "target's values row by row, unless allow-listed."
    ),
}

UNEXPECTED_FAMILY = "unexpected"
"""Family of a feature column the catalog does not know (reported by column_count too)."""

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
    feature_null_share: float = 0.05
    """Threshold on each feature family's null share (null cells / cells of the family)."""
    family_null_share: Mapping[str, float] = field(default_factory=dict)
    """Per-family overrides of `feature_null_share`."""
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

    def null_threshold(self, family: str) -> float:
        return self.family_null_share.get(family, self.feature_null_share)

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_rows": self.min_rows,
            "max_rows": self.max_rows,
            "target_null_share": self.target_null_share,
            "feature_null_share": self.feature_null_share,
            "family_null_share": dict(self.family_null_share),
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

    @classmethod
    def for_pair(cls, catalog: Catalog, pair: str, spine_rows: int) -> Expectation:
        features = catalog.feature_columns(pair)
        return cls(
            pair=pair,
            spine_rows=spine_rows,
            columns=catalog.training_columns(pair),
            targets=catalog.targets[catalog.check_pair(pair)].targets,
            family_of={f.name: f.family for f in features},
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
        """Per-family columns and null share as a markdown table (one row per family)."""
        lines = [
            "| family | columns | null share | all-null columns | threshold | ok |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for f in self.families:
            lines.append(
                f"| {f.family} | {f.columns:,} | {f.null_share:.2%} | {f.all_null_columns} "
                f"| {f.threshold:.0%} | {'yes' if f.passed else 'NO'} |"
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


def _footer_stats(pf: pq.ParquetFile, path: Path, want_minmax: set[int]) -> _ColumnStats:
    """Aggregate column chunk null counts over all row groups.

    This walk is the whole cost of validating a 17,000-column file (about 1.5 us per column
    chunk, 17,031 x 44 chunks for row groups of 4,096 rows), so it reads one statistic per chunk;
    min/max come from one row group in the middle, where a copied target has the same min/max
    as its source, instead of from every chunk.
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
    minmax: dict[int, tuple[float, float]] = {}
    last_rows = meta.row_group(groups - 1).num_rows if groups else 0
    if groups and want_minmax:
        rg = meta.row_group(groups // 2)
        for j in want_minmax:
            stats = rg.column(j).statistics
            if stats is not None and stats.has_min_max:
                minmax[j] = (float(stats.min), float(stats.max))
    return _ColumnStats(
        names, list(schema.types), nulls, last_nulls, last_rows, minmax, groups // 2
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
    rows: int, stats: _ColumnStats, exp: Expectation, th: Thresholds, read_columns: int
) -> tuple[CheckOutcome, tuple[FamilyNulls, ...]]:
    features = _features(stats.names, exp)
    by_family: dict[str, list[int]] = {}
    for j in features:
        by_family.setdefault(exp.family_of.get(stats.names[j], UNEXPECTED_FAMILY), []).append(j)
    order = {f: i for i, f in enumerate(dict.fromkeys(exp.family_of.values()))}
    families: list[FamilyNulls] = []
    all_null: list[str] = []
    for family in sorted(by_family, key=lambda f: order.get(f, len(order))):
        idx = np.asarray(by_family[family])
        nulls = stats.nulls[idx]
        dead = idx[nulls >= rows] if rows else idx[:0]
        all_null += [stats.names[j] for j in dead]
        families.append(
            FamilyNulls(
                family,
                len(idx),
                _share(int(nulls.sum()), rows * len(idx)),
                len(dead),
                th.null_threshold(family),
            )
        )
    feature_idx = np.asarray(features, dtype=np.int64)
    total = int(stats.nulls[feature_idx].sum()) if len(feature_idx) else 0
    overall = _share(total, rows * len(feature_idx))
    worst: list[tuple[str, float]] = []
    if len(feature_idx) and rows:
        top = feature_idx[np.argsort(-stats.nulls[feature_idx], kind="stable")[:10]]
        worst = [(stats.names[j], round(int(stats.nulls[j]) / rows, 6)) for j in top]
    last = stats.last_group_nulls[feature_idx].sum() if len(feature_idx) else 0
    tail_share = _share(int(last), stats.last_group_rows * len(feature_idx))
    over = {f.family: round(f.null_share, 6) for f in families if f.null_share > f.threshold}
    by_family_dead = {f.family: f.all_null_columns for f in families if f.all_null_columns}
    passed = not over and not all_null
    parts = [f"{len(feature_idx):,} features, {overall:.2%} null"]
    if over:
        parts.append(
            "families over threshold: "
            + ", ".join(f"{k} {v:.1%} > {th.null_threshold(k):.0%}" for k, v in over.items())
        )
    if all_null:
        parts.append(
            f"{len(all_null)} columns 100% null ("
            + ", ".join(f"{k} {v}" for k, v in by_family_dead.items())
            + ")"
        )
    metadata = {
        "summary": "; ".join(parts),
        "actual": round(overall, 6),
        "expected": "every family's null share <= its threshold; no feature column 100% null",
        "threshold": {"feature_null_share": th.feature_null_share, **th.family_null_share},
        "families": {
            f.family: {"columns": f.columns, "null_share": round(f.null_share, 6)} for f in families
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
    }
    return (
        CheckOutcome(
            "null_completeness", passed, CHECK_DESCRIPTIONS["null_completeness"], metadata
        ),
        tuple(families),
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


def _check_footer_size(path: Path, pair: str, limit: int) -> None:
    """Refuse a footer too large to parse in bounded memory, from its length in the last 8 bytes
    (a file that is not parquet is left to pyarrow's error)."""
    try:
        with open(path, "rb") as f:
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
    path: Path | str, expectation: Expectation, thresholds: Thresholds | None = None
) -> ValidationReport:
    """Run every gate check on a training file without loading it: footer statistics and the key
    column only. Raises ValidationError only when the file cannot be read as parquet."""
    th = thresholds or Thresholds()
    clock = Stopwatch()
    path = Path(path)
    _check_footer_size(path, expectation.pair, th.max_footer_bytes)
    try:
        pf = pq.ParquetFile(path)
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
    null_outcome, families = _null_completeness(rows, stats, expectation, th, read_columns)
    outcomes = (
        _row_count(rows, expectation, th),
        _column_count(names, expectation, th),
        _target_horizons(rows, stats, index, expectation, th),
        null_outcome,
        _key_integrity(pf, names, th),
        _no_target_leakage(pf, stats, index, expectation, th),
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
        row_groups=pf.metadata.num_row_groups,
    )
