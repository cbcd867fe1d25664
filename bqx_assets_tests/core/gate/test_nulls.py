"""null_completeness and newest_rows: families within their expected null share, no dead column,
and the newest day no more null than the whole file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import KEY
from bqx_assets_tests.core.gate import merged
from bqx_assets_tests.core.gate.handmade import (
    ROW_GROUP,
    ROWS,
    Columns,
    build,
    good_columns,
    run,
    write,
)


# -- null_completeness -----------------------------------------------------------------------
def test_null_completeness_fails_on_a_family_100_percent_null(
    tmp_path: Path, expectation: Expectation
) -> None:
    # The ETF source's keys became 1970 dates, so no corr_etf_idx row joined: all null.
    def change(cols: Columns) -> None:
        for name in ("corr_etf_idx_spy__corr_45", "corr_etf_idx_spy__n_45"):
            cols[name] = pa.nulls(ROWS, cols[name].type)

    report = run(build(tmp_path, expectation, change), expectation)
    nulls = report.outcome("null_completeness")
    assert not nulls.passed
    # Without the merge's coverage record every null counts as the source's.
    assert nulls.metadata["families"]["corr"] == {
        "columns": 2,
        "null_share": 1.0,
        "merge_null_share": 0.0,
        "source_null_share": 1.0,
    }
    assert nulls.metadata["families_over_threshold"] == {"corr": 1.0}
    assert nulls.metadata["all_null_count"] == 2
    assert nulls.metadata["all_null_by_family"] == {"corr": 2}
    assert nulls.metadata["all_null_columns"] == [
        "corr_etf_idx_spy__corr_45",
        "corr_etf_idx_spy__n_45",
    ]
    assert list(nulls.metadata["worst_columns"])[:2] == nulls.metadata["all_null_columns"]
    # corr's threshold: its expected share plus its own tolerance (0.53 + 0.30).
    assert "| 100.00% | - | 2 | 83.0% | NO |" in report.family_table_markdown()
    assert "no coverage record" in nulls.metadata["merge_vs_source"]


def test_null_completeness_fails_on_one_all_null_column_and_per_family_threshold(
    tmp_path: Path, expectation: Expectation
) -> None:
    def change(cols: Columns) -> None:
        cols["agg_bqx__agg_std_45"] = pa.nulls(ROWS, pa.float64())

    path = build(tmp_path, expectation, change)
    # agg is 50% null: over 7.4%; a per-family expectation lets the share pass but not the dead
    # column.
    nulls = run(
        path,
        expectation,
        Thresholds(min_rows=1, family_null_share={"agg": 0.6}, require_coverage=False),
    )
    outcome = nulls.outcome("null_completeness")
    assert not outcome.passed
    assert outcome.metadata["families_over_threshold"] == {}
    assert outcome.metadata["all_null_columns"] == ["agg_bqx__agg_std_45"]
    assert outcome.metadata["threshold"] == {
        "expected_null_share": {"agg": 0.6, "base": 0.024, "corr": 0.024},
        "tolerance": {"agg": 0.05, "base": 0.05, "corr": 0.3},
    }


def test_null_completeness_reads_columns_without_statistics(
    tmp_path: Path, expectation: Expectation
) -> None:
    cols = good_columns(expectation)
    cols["base_bqx__bqx_45"] = pa.nulls(ROWS, pa.float64())
    path = write(tmp_path / "nostats.parquet", cols, write_statistics=[KEY])
    outcome = run(path, expectation).outcome("null_completeness")
    assert outcome.metadata["all_null_columns"] == ["base_bqx__bqx_45"]
    assert "columns without statistics read" in outcome.metadata["null_counts_from"]


def test_a_family_over_its_expected_share_fails_a_first_build(tmp_path: Path) -> None:
    def late(data: merged.Data) -> None:  # tri starts at 60% of the spine: 60% null, expected 24%
        keys, cols = data["tri_agg_bqx_eur_usd_gbp"]
        cut = int(merged.ROWS * 0.6) - merged.ROWS // 5
        data["tri_agg_bqx_eur_usd_gbp"] = (keys[cut:], {c: v[cut:] for c, v in cols.items()})

    report = merged.build(tmp_path, late)
    nulls = report.outcome("null_completeness")
    assert not nulls.passed
    assert nulls.metadata["families_over_threshold"] == {"tri": pytest.approx(0.6)}
    assert "tri 60.0% > 24.0% + 15%" in nulls.metadata["summary"]
    assert nulls.metadata["merge_vs_source"] == "from the merge's coverage record"


# -- newest_rows -----------------------------------------------------------------------------
def test_null_values_in_the_newest_day_fail_newest_rows(tmp_path: Path) -> None:
    def tail_nulls(data: merged.Data) -> None:  # rows are there, values are not
        _, cols = data["agg_bqx_eurusd"]
        for values in cols.values():
            values[-1000:] = np.nan

    report = merged.build(tmp_path, tail_nulls)
    outcome = report.outcome("newest_rows")
    assert not outcome.passed and "table_coverage" not in report.failed
    assert outcome.metadata["families_over"]["agg"]["newest"] == pytest.approx(1000 / 1440)
    assert outcome.metadata["tables"][0].startswith("agg_bqx_eurusd ")
    assert "agg 69.4% vs" in outcome.metadata["summary"]


def test_without_a_coverage_record_the_last_row_group_stands_for_the_newest_rows(
    tmp_path: Path, expectation: Expectation
) -> None:
    def null_tail(cols: Columns) -> None:  # the last row group's agg values are null
        mask = np.arange(ROWS) >= ROWS - ROWS % ROW_GROUP
        for name in ("agg_bqx__agg_mean_45", "agg_bqx__agg_std_45"):
            cols[name] = pa.array(np.ones(ROWS), mask=mask)

    clean = run(build(tmp_path, expectation), expectation).outcome("newest_rows")
    assert clean.passed and "(no coverage record)" in clean.metadata["summary"]
    outcome = run(build(tmp_path, expectation, null_tail), expectation).outcome("newest_rows")
    assert not outcome.passed
    assert outcome.metadata["actual"] > outcome.metadata["expected"] + 0.1
    assert outcome.metadata["threshold"] == Thresholds().newest_null_tolerance


def test_a_single_row_group_without_a_coverage_record_needs_require_coverage_off(
    tmp_path: Path, expectation: Expectation
) -> None:
    path = write(tmp_path / "one.parquet", good_columns(expectation))
    # One row group: no "last" one to compare with the rest.
    pq.write_table(pq.read_table(path), path)
    assert run(path, expectation).outcome("newest_rows").passed  # require_coverage=False
    required = run(path, expectation, Thresholds(min_rows=1)).outcome("newest_rows")
    assert not required.passed
    assert required.metadata["threshold"] == {"require_coverage": True}
    assert "no coverage record in the footer" in required.metadata["summary"]
