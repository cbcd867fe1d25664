"""Nulls: each family within its expected share; the newest day as null as its minutes were."""

# Why the newest day is judged against its reference minutes: docs/design/gate.md.

from __future__ import annotations

import numpy as np

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.profile import FamilyProfile, Profile
from bqx_assets.core.gate.report import (
    CheckOutcome,
    Expectation,
    FamilyNulls,
    Listing,
    MetadataValue,
    family_listing,
    iso,
    share,
)
from bqx_assets.core.gate.stats import ColumnStats
from bqx_assets.core.gate.tables import no_coverage
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.merge.coverage import Coverage

WORST_COLUMNS = 10
"""Columns listed by null share in null_completeness's metadata."""


def null_completeness(
    rows: int,
    stats: ColumnStats,
    exp: Expectation,
    th: Thresholds,
    read_columns: int,
    profile: Profile,
) -> tuple[CheckOutcome, tuple[FamilyNulls, ...]]:
    features = exp.features(stats.names)
    families = tuple(
        FamilyNulls(
            f.family,
            f.columns,
            f.null_share,
            f.all_null_columns,
            th.null_threshold(f.family),
            th.expected_null_share(f.family),
            th.null_tolerance(f.family),
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
    overall = share(int(nulls.sum()), rows * len(feature_idx))
    over = [f for f in families if f.null_share > f.threshold]
    by_family_dead: dict[str, int] = {}
    for i in dead:
        by_family_dead[column_families[i]] = by_family_dead.get(column_families[i], 0) + 1
    passed = not over and not all_null
    worst = max(families, key=lambda f: f.null_share - f.threshold, default=None)
    parts = [f"{len(feature_idx):,} features, {overall:.2%} null"]
    if over:
        parts.append(
            "families over their allowed share: "
            + ", ".join(f"{f.family} {f.null_share:.1%} > {f.allowed}" for f in over)
        )
    elif worst is not None:
        parts.append(
            "every family within its allowed share (closest: "
            f"{worst.family} {worst.null_share:.1%} of {worst.allowed})"
        )
    if all_null:
        parts.append(
            f"{len(all_null)} columns 100% null ("
            + ", ".join(f"{k} {v}" for k, v in by_family_dead.items())
            + f", e.g. {', '.join(all_null[:3])})"
        )
    metadata: dict[str, MetadataValue] = {
        "summary": "; ".join(parts),
        # The worst family's null share over its allowed share: above 0 fails.
        "actual": round(worst.null_share - worst.threshold, 6) if worst else 0.0,
        "threshold": 0.0,
        "expected": "every family's null share at most its expected share + tolerance; no "
        "feature column 100% null",
        "null_share": round(overall, 6),
        "families_over": len(over),
        "all_null_columns": len(all_null),
        "families": family_listing(families, profile),
    }
    if all_null:
        metadata["all_null"] = Listing.of(
            ("column", "family"),
            [(column_names[i], column_families[i]) for i in dead],
            th.max_names,
        )
    if len(nulls) and rows:
        top = np.argsort(-nulls, kind="stable")[:WORST_COLUMNS]
        metadata["worst_columns"] = Listing.of(
            ("column", "family", "null share", "nulls"),
            [
                (column_names[i], column_families[i], f"{nulls[i] / rows:.2%}", int(nulls[i]))
                for i in top
            ],
        )
    metadata["null_counts_from"] = (
        "footer statistics"
        if not read_columns
        else f"footer statistics; {read_columns} columns without statistics read"
    )
    metadata["merge_vs_source"] = (
        "from the merge's coverage record"
        if profile.coverage is not None
        else "no coverage record: every null counted as the source's"
    )
    return (
        CheckOutcome(
            "null_completeness", passed, CHECK_DESCRIPTIONS["null_completeness"], metadata
        ),
        families,
    )


def newest_rows(
    profile: Profile, stats: ColumnStats, exp: Expectation, th: Thresholds
) -> CheckOutcome:
    name = "newest_rows"
    tolerance = th.newest_null_tolerance
    coverage = profile.coverage
    if coverage is None:
        # Without the merge's record, the last row group stands for the newest rows when the
        # file has more than one, and the whole file for their reference.
        if stats.last_group_rows and stats.sample_group > 0:
            feature_idx = np.asarray(exp.features(stats.names), dtype=np.int64)
            cells = stats.last_group_rows * len(feature_idx)
            tail = share(int(stats.last_group_nulls[feature_idx].sum()), cells)
            whole = share(
                int(np.maximum(stats.nulls[feature_idx], 0).sum()),
                profile.rows * len(feature_idx),
            )
            return CheckOutcome(
                name,
                tail <= whole + tolerance,
                CHECK_DESCRIPTIONS[name],
                {
                    "summary": f"last row group {tail:.2%} null vs {whole:.2%} in the whole file, "
                    f"at most {tolerance * 100:g} points more allowed (no coverage record)",
                    "actual": round(tail - whole, 6),
                    "threshold": tolerance,
                    "expected": "the last row group at most the tolerance more null than the "
                    "whole file",
                    "newest_null_share": round(tail, 6),
                    "reference_null_share": round(whole, 6),
                },
            )
        return no_coverage(name, th, "the newest rows cannot be told from the footer")
    judged = [f for f in profile.families if _judged(f)]
    over = [f for f in judged if _excess(f) > tolerance]
    worst = max(judged, key=_excess, default=None)
    newest = f"the newest day ({coverage.newest_rows:,} rows from {iso(coverage.newest_from)})"
    if not coverage.reference_rows:
        summary = (
            f"{newest}: no earlier day of the spine has its minutes; nothing to judge it against"
        )
    elif over:
        summary = (
            f"{newest} has more null values than the same minutes of the previous trading "
            f"day, by more than {tolerance * 100:g} points: "
            + ", ".join(
                f"{f.family} {f.newest_source_null_share:.1%} vs "
                f"{f.reference_source_null_share:.1%}"
                for f in over
            )
        )
        worst_tables = _worst_tables(profile, coverage, {f.family for f in over})
        if worst_tables:
            summary += "; worst tables " + ", ".join(
                f"{t[0]} {t[2]} vs {t[3]}" for t in worst_tables[:3]
            )
    else:
        summary = (
            f"{newest} within {tolerance * 100:g} points of the null values of the same minutes "
            f"of the previous trading day ({coverage.reference_rows:,} rows) in every family"
            + (f" (closest: {worst.family} {_excess(worst) * 100:+.1f} points)" if worst else "")
        )
    metadata: dict[str, MetadataValue] = {
        "summary": summary,
        # The worst family's excess of null values over the reference minutes (a share).
        "actual": round(_excess(worst), 6) if worst else 0.0,
        "threshold": tolerance,
        "expected": "per family, the share of null values in the newest day's rows at most "
        f"{tolerance * 100:g} points over that of the same minutes of the previous trading day",
        "newest_rows": coverage.newest_rows,
        "newest_from": iso(coverage.newest_from),
        "reference_rows": coverage.reference_rows,
        "families_over": len(over),
        "families": Listing.of(
            (
                "family",
                "newest day: null values",
                "same minutes, previous trading day: null values",
                "excess",
                "ok",
            ),
            [
                (
                    f.family,
                    _pct(f.newest_source_null_share, f.newest_cells),
                    _pct(f.reference_source_null_share, f.reference_cells),
                    f"{_excess(f) * 100:+.2f} points" if _judged(f) else "not judged",
                    "NO" if f in over else "yes",
                )
                for f in profile.families
            ],
        ),
    }
    if over:
        metadata["worst_tables"] = Listing.of(
            ("table", "family", "newest day: null values", "same minutes, previous trading day"),
            _worst_tables(profile, coverage, {f.family for f in over}),
            th.max_names,
        )
    return CheckOutcome(name, not over, CHECK_DESCRIPTIONS[name], metadata)


def _judged(f: FamilyProfile) -> bool:
    """Whether the family has values both in the newest day's rows and in their reference's."""
    return bool(f.newest_cells) and bool(f.reference_cells)


def _excess(f: FamilyProfile) -> float:
    return (f.newest_source_null_share or 0.0) - (f.reference_source_null_share or 0.0)


def _pct(value: float | None, cells: int | None) -> str:
    return "no rows" if not cells or value is None else f"{value:.2%}"


def _worst_tables(
    profile: Profile, coverage: Coverage, families: set[str]
) -> list[tuple[str, str, str, str]]:
    """Tables of `families` by how much more null their values are in the newest day than in
    its reference minutes."""
    family_of_table = dict(
        zip(
            profile.columns.column("table").to_pylist(),
            profile.columns.column("family").to_pylist(),
            strict=True,
        )
    )
    scored = []
    for t in coverage.tables:
        family = family_of_table.get(t.table)
        if family not in families or not t.newest_matched or not t.reference_matched:
            continue
        made = (coverage.newest_rows - t.newest_matched) * t.columns
        newest = share(max(sum(t.newest_nulls) - made, 0), t.newest_matched * t.columns)
        made = (coverage.reference_rows - t.reference_matched) * t.columns
        before = share(max(sum(t.reference_nulls) - made, 0), t.reference_matched * t.columns)
        if newest > before:
            scored.append((newest - before, (t.table, family, f"{newest:.0%}", f"{before:.0%}")))
    return [row for _, row in sorted(scored, key=lambda s: -s[0])]
