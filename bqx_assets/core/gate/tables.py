"""Table coverage: each feature table covers its share of the spine and reaches its end."""

from __future__ import annotations

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.profile import UNEXPECTED_FAMILY
from bqx_assets.core.gate.report import (
    CheckOutcome,
    Expectation,
    Listing,
    MetadataValue,
    iso,
    share,
)
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.merge.coverage import Coverage


def no_coverage(name: str, th: Thresholds, why: str) -> CheckOutcome:
    """The outcome of a check that needs the merge's coverage record when the file has none:
    passed only when the thresholds do not require one."""
    return CheckOutcome(
        name,
        not th.require_coverage,
        CHECK_DESCRIPTIONS[name],
        {
            "summary": f"no coverage record in the footer ({why})"
            + ("" if th.require_coverage else "; not required"),
            # Records missing against records allowed to be missing.
            "actual": 1.0,
            "threshold": 0.0 if th.require_coverage else 1.0,
            "expected": "the merge's coverage record",
            "require_coverage": th.require_coverage,
        },
    )


def table_coverage(
    coverage: Coverage | None, rows: int, exp: Expectation, th: Thresholds
) -> CheckOutcome:
    name = "table_coverage"
    if coverage is None:
        return no_coverage(name, th, "the file was not written by bqx merge")
    short: list[tuple[int, tuple[str | int, ...]]] = []  # (newest minutes missed, row)
    low = stopped = 0
    by_family: dict[str, int] = {}
    for t in coverage.tables:
        family = exp.table_family.get(t.table, UNEXPECTED_FAMILY)
        covered = share(t.matched, coverage.spine_rows)
        floor = th.coverage_floor(family)
        reasons = []
        if covered < floor:
            low += 1
            reasons.append(f"covers {covered:.1%} of the spine < {floor:.0%}")
        if t.tail_expected > th.tail_tolerance_rows:
            stopped += 1
            reasons.append(
                f"stops {t.tail_missing:,} rows before the spine's end, {t.tail_expected:,} of "
                f"them minutes it had the previous trading day (tolerance {th.tail_tolerance_rows})"
            )
        if reasons:
            by_family[family] = by_family.get(family, 0) + 1
            missed = coverage.newest_rows - t.newest_matched
            short.append(
                (
                    missed,
                    (
                        t.table,
                        family,
                        f"{covered:.1%}",
                        f"{floor:.0%}",
                        iso(t.last_key) if t.last_key is not None else "-",
                        t.tail_expected,
                        missed,
                        "; ".join(reasons),
                    ),
                )
            )
    short.sort(key=lambda item: -item[0])
    spine_ok = rows == coverage.spine_rows
    worst_due = max((t.tail_expected for t in coverage.tables), default=0)
    if short or not spine_ok:
        parts = []
        if not spine_ok:
            parts.append(f"coverage record for {coverage.spine_rows:,} rows, file has {rows:,}")
        if short:
            parts.append(
                f"{len(short)} of {len(coverage.tables)} tables short ("
                + ", ".join(f"{k} {v}" for k, v in by_family.items())
                + "): "
                + "; ".join(
                    f"{row[0]} misses {missed:,} of the {coverage.newest_rows:,} newest minutes "
                    f"({row[-1]})"
                    for missed, row in short[:3]
                )
            )
        summary = "; ".join(parts)
    else:
        summary = (
            f"{len(coverage.tables)} tables cover the spine "
            f"{iso(coverage.first_key)} .. {iso(coverage.last_key)} as expected: each at least "
            f"its family's share ({_floors(th)}), none missing more than "
            f"{th.tail_tolerance_rows} of the last minutes it had the previous trading day"
        )
    metadata: dict[str, MetadataValue] = {
        "summary": summary,
        "actual": float(len(short) + (not spine_ok)),
        "threshold": 0.0,
        "expected": "every table covers its family's share of the spine and misses at most "
        f"{th.tail_tolerance_rows} of the last minutes it had the previous trading day",
        "tables": len(coverage.tables),
        "low_coverage": low,
        "stopped_early": stopped,
        "most_minutes_due": worst_due,
        "tail_tolerance_rows": th.tail_tolerance_rows,
        "newest_rows": coverage.newest_rows,
        "newest_from": iso(coverage.newest_from),
    }
    if short:
        metadata["short_tables"] = Listing.of(
            (
                "table",
                "family",
                "covers",
                "floor",
                "last key",
                "tail minutes due",
                "newest minutes missed",
                "why",
            ),
            [row for _, row in short],
            th.max_names,
        )
    return CheckOutcome(name, not short and spine_ok, CHECK_DESCRIPTIONS[name], metadata)


def _floors(th: Thresholds) -> str:
    named = ", ".join(f"{f} {v:.0%}" for f, v in th.family_min_coverage.items())
    return f"{named}, others {th.min_coverage:.0%}" if named else f"{th.min_coverage:.0%}"
