"""Every pair's gate at a glance, read from an output root where builds were published or
quarantined: failing pairs first with each failed check's reason, pairs never built next, the
drift between a pair's last two published profiles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from bqx_assets.core.gate.profile import Profile, build_profile
from bqx_assets.core.gate.report import CheckOutcome, ValidationReport
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.overview import NOT_BUILT, PASSED, drift_text, gate_overview, overview_table
from bqx_assets.core.publish import TrainingFile, publish_training_file
from bqx_assets.core.storage import LocalStorage

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
LEAK = "1 feature column holds a target: regime_bqx__x (= target_bqx45_h15)"


def _profile(pair: str, nulls: dict[str, float], rows: int = 1000) -> Profile:
    """A profile with one column per family, `nulls[family]` of it null."""
    names = ["interval_time", *(f"{family}_col" for family in nulls)]
    counts = [0, *(round(share * rows) for share in nulls.values())]
    return build_profile(
        pair, rows, names, [pa.timestamp("us", "UTC"), *[pa.float64()] * len(nulls)],
        np.array(counts), np.zeros(len(names)), np.ones(len(names)),
        list(range(1, len(names))), {f"{f}_col": f for f in nulls}, list(nulls), None,
    )  # fmt: skip


def _report(pair: str, failed: dict[str, str] | None = None) -> dict:
    failed = failed or {}
    outcomes = tuple(
        CheckOutcome(name, name not in failed, "", {"summary": failed.get(name, "fine")})
        for name in CHECK_NAMES
    )
    return ValidationReport(pair, f"training_{pair}.parquet", 1000, 17, outcomes, 0.1, 1).to_dict()


def _build(
    out: LocalStorage, pair: str, at: datetime, *, failed: dict[str, str] | None = None,
    nulls: dict[str, float] | None = None,
) -> None:  # fmt: skip
    """A build of `pair` published (or quarantined when a check `failed`) at `at`."""
    sink = out.stage(training_file_key(pair))
    sink.write(f"PAR1 {pair} {at.isoformat()} PAR1".encode())
    built = TrainingFile(
        pair, sink.commit(), not failed, _report(pair, failed),
        _profile(pair, nulls or {"agg": 0.1, "corr": 0.5}),
    )  # fmt: skip
    publish_training_file(out, built, now=at, run_id=f"run-{pair}-{at.hour}")


def test_failing_pairs_come_first_with_their_reasons_then_pairs_never_built(
    tmp_path: Path,
) -> None:
    out = LocalStorage(tmp_path / "out")
    _build(out, "eurusd", NOW)
    _build(out, "usdjpy", NOW)
    _build(out, "usdjpy", NOW.replace(hour=13), failed={"no_target_leakage": LEAK})

    gates = gate_overview(out, ["eurusd", "gbpusd", "usdjpy"])

    assert [g.pair for g in gates] == ["usdjpy", "gbpusd", "eurusd"]
    failing, never, good = gates
    assert failing.status == "quarantined" and failing.failed == ["no_target_leakage"]
    assert failing.checks["no_target_leakage"] == f"FAILED: {LEAK}"
    assert (
        failing.run_id == "run-usdjpy-13" and failing.built_at == NOW.replace(hour=13).isoformat()
    )
    assert (never.status, never.checks, never.failed) == (NOT_BUILT, {}, [])
    assert good.status == "published" and set(good.checks.values()) == {PASSED}
    assert good.rows == 1000 and good.columns == 17

    table = overview_table(gates, {"eurusd": {"cost_usd": 0.012}})
    assert table.column("pair").to_pylist() == ["usdjpy", "gbpusd", "eurusd"]
    assert table.column("failed").to_pylist() == [1, 0, 0]
    assert table.column("no_target_leakage").to_pylist() == [f"FAILED: {LEAK}", "", PASSED]
    assert table.column("cost_usd").to_pylist() == [None, None, 0.012]


def test_a_report_without_a_check_shows_it_failed_as_not_run(tmp_path: Path) -> None:
    out = LocalStorage(tmp_path / "out")
    _build(out, "eurusd", NOW)
    report = _report("eurusd")
    del report["checks"]["profile_drift"]
    sink = out.stage(training_file_key("eurusd"))
    sink.write(b"PAR1 other PAR1")
    publish_training_file(out, TrainingFile("eurusd", sink.commit(), True, report), now=NOW)

    (gate,) = gate_overview(out, ["eurusd"])
    assert gate.failed == ["profile_drift"] and gate.checks["profile_drift"] == "FAILED: not run"


def test_drift_is_the_family_that_moved_most_between_the_last_two_published_files(
    tmp_path: Path,
) -> None:
    out = LocalStorage(tmp_path / "out")
    _build(out, "eurusd", NOW, nulls={"agg": 0.10, "corr": 0.50})
    (first,) = gate_overview(out, ["eurusd"])
    assert first.drift == ""  # one published profile: nothing to compare
    _build(out, "eurusd", NOW.replace(hour=13), nulls={"agg": 0.12, "corr": 0.45})
    (gate,) = gate_overview(out, ["eurusd"])
    assert gate.drift == "corr -5.00 pts"
    # A quarantined build publishes no profile: the drift stays the published files'.
    _build(out, "eurusd", NOW.replace(hour=14), failed={"row_count": "short"},
           nulls={"agg": 0.9, "corr": 0.9})  # fmt: skip
    (after,) = gate_overview(out, ["eurusd"])
    assert after.drift == "corr -5.00 pts" and after.status == "quarantined"
    assert drift_text([]) == ""
