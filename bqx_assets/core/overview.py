"""Every pair's gate at a glance: its latest build's checks, rows, newest key and drift."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from bqx_assets.core.gate.profile import Profile, load_history
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.publish import latest_report
from bqx_assets.core.storage import Storage

PASSED = "passed"
NOT_BUILT = "not built"


@dataclass(frozen=True)
class PairGate:
    """One pair's latest build as the gate judged it."""

    pair: str
    status: str
    """published, unchanged, quarantined, or not built."""
    checks: Mapping[str, str] = field(default_factory=dict)
    """Per check: "passed", or "FAILED: " and its one-line reason."""
    rows: int | None = None
    columns: int | None = None
    last_key: str | None = None
    built_at: str | None = None
    drift: str = ""
    """The family whose null share moved most between the last two published profiles."""
    run_id: str | None = None

    @property
    def failed(self) -> list[str]:
        return [name for name, verdict in self.checks.items() if verdict != PASSED]

    @property
    def order(self) -> tuple[int, str]:
        """Failing pairs first, then pairs never built, then the rest; by pair within each."""
        if self.status == NOT_BUILT:
            return 1, self.pair
        return (0 if self.failed or self.status == "quarantined" else 2), self.pair


def pair_gate(storage: Storage, pair: str, history: int = 2) -> PairGate:
    """The pair's latest build from the output root: its gate report and its profiles."""
    report = latest_report(storage, pair)
    if report is None:
        return PairGate(pair, NOT_BUILT)
    checks = {}
    for name in CHECK_NAMES:
        outcome = (report.get("checks") or {}).get(name)
        if outcome is None:
            checks[name] = "FAILED: not run"
        elif outcome.get("passed"):
            checks[name] = PASSED
        else:
            checks[name] = f"FAILED: {(outcome.get('metadata') or {}).get('summary', '')}"
    return PairGate(
        pair=pair,
        status=str(report.get("status", "")),
        checks=checks,
        rows=report.get("rows"),
        columns=report.get("columns"),
        last_key=report.get("last_key"),
        built_at=report.get("at"),
        drift=drift_text(load_history(storage, pair, history)),
        run_id=report.get("run_id"),
    )


def drift_text(profiles: Sequence[Profile]) -> str:
    """The largest move of a family's null share from the older to the newer of the first two
    profiles (newest first), in points; "" with fewer than two."""
    if len(profiles) < 2:
        return ""
    new, old = profiles[0], profiles[1]
    moves = []
    for family in new.families:
        before = old.family(family.family)
        if before is not None:
            moves.append((family.null_share - before.null_share, family.family))
    if not moves:
        return ""
    move, family = max(moves, key=lambda m: abs(m[0]))
    return f"{family} {move * 100:+.2f} pts"


def gate_overview(storage: Storage, pairs: Sequence[str]) -> list[PairGate]:
    """Every pair's latest build, failing pairs first."""
    return sorted((pair_gate(storage, pair) for pair in pairs), key=lambda g: g.order)


def overview_table(
    gates: Sequence[PairGate], extra: Mapping[str, Mapping[str, Any]] | None = None
) -> pa.Table:
    """The overview as a table, a row per pair: its status, each check's verdict, its rows,
    newest key, build time and drift; `extra` adds columns by pair (e.g. the build's cost)."""
    extra = extra or {}
    names = sorted({k for row in extra.values() for k in row})
    rows = [
        {
            "pair": g.pair,
            "status": g.status,
            "failed": len(g.failed),
            **{name: g.checks.get(name, "") for name in CHECK_NAMES},
            "rows": g.rows,
            "last_key": g.last_key,
            "built_at": g.built_at,
            "drift": g.drift,
            **{name: extra.get(g.pair, {}).get(name) for name in names},
        }
        for g in gates
    ]
    return pa.Table.from_pylist(rows)
