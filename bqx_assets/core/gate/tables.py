"""Table coverage: each feature table covers its share of the spine and reaches its end."""

from __future__ import annotations

from typing import Any

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.profile import UNEXPECTED_FAMILY
from bqx_assets.core.gate.report import CheckOutcome, Expectation, iso, share
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.merge.coverage import Coverage, TableCoverage


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
            "actual": "no record",
            "expected": "the merge's coverage record",
            "threshold": {"require_coverage": th.require_coverage},
        },
    )


def table_coverage(
    coverage: Coverage | None, rows: int, exp: Expectation, th: Thresholds
) -> CheckOutcome:
    name = "table_coverage"
    if coverage is None:
        return no_coverage(name, th, "the file was not written by bqx merge")
    problems: dict[str, dict[str, Any]] = {}
    short: list[TableCoverage] = []
    stopped: list[TableCoverage] = []
    for t in coverage.tables:
        family = exp.table_family.get(t.table, UNEXPECTED_FAMILY)
        covered = share(t.matched, coverage.spine_rows)
        floor = th.coverage_floor(family)
        reasons = []
        if covered < floor:
            short.append(t)
            reasons.append(f"covers {covered:.1%} of the spine < {floor:.0%}")
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
                "coverage": round(covered, 6),
                "last_key": iso(t.last_key) if t.last_key is not None else None,
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
            f"{iso(coverage.first_key)} .. {iso(coverage.last_key)} as expected"
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
            "newest_from": iso(coverage.newest_from),
            "tables": dict(worst[: th.max_names]),
        },
    )
