"""Nulls: each family within its expected share, and the newest day no more null than the file."""

from __future__ import annotations

import numpy as np

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import CheckOutcome, Expectation, FamilyNulls, cap, iso, share
from bqx_assets.core.gate.stats import ColumnStats
from bqx_assets.core.gate.tables import no_coverage
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.merge.coverage import Coverage


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
    overall = share(total, rows * len(feature_idx))
    worst: list[tuple[str, float]] = []
    if len(nulls) and rows:
        top = np.argsort(-nulls, kind="stable")[:10]
        worst = [(column_names[i], round(int(nulls[i]) / rows, 6)) for i in top]
    last = stats.last_group_nulls[feature_idx].sum() if len(feature_idx) else 0
    tail_share = share(int(last), stats.last_group_rows * len(feature_idx))
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
        "all_null_columns": cap(all_null, th.max_names),
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


def newest_rows(
    profile: Profile, stats: ColumnStats, exp: Expectation, th: Thresholds
) -> CheckOutcome:
    name = "newest_rows"
    coverage = profile.coverage
    if coverage is None:
        # Without the merge's record, the last row group stands for the newest rows when the
        # file has more than one.
        if stats.last_group_rows and stats.sample_group > 0:
            feature_idx = np.asarray(exp.features(stats.names), dtype=np.int64)
            cells = stats.last_group_rows * len(feature_idx)
            tail = share(int(stats.last_group_nulls[feature_idx].sum()), cells)
            whole = share(
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
        return no_coverage(name, th, "the newest rows cannot be told from the footer")
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
            f"the newest day ({coverage.newest_rows:,} rows from {iso(coverage.newest_from)}) is "
            "more null than the whole file: "
            + ", ".join(f"{k} {v['newest']:.1%} vs {v['whole']:.1%}" for k, v in over.items())
            + (f"; worst tables {', '.join(worst_tables[:3])}" if worst_tables else "")
        )
    else:
        summary = (
            f"newest day ({coverage.newest_rows:,} rows from {iso(coverage.newest_from)}) within "
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
        scored.append(
            (share(max(sum(t.newest_nulls) - made, 0), t.newest_matched * t.columns), t.table)
        )
    return [f"{name} {s:.0%}" for s, name in sorted(scored, reverse=True) if s > 0]
