"""null_completeness and newest_rows: families within their expected null share, no dead column,
and the newest day no more null than the same minutes of the previous trading day."""

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
from bqx_assets_tests.core.gate.listings import column, listed


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
    corr = next(r for r in listed(nulls, "families") if r["family"] == "corr")
    assert corr == {
        "family": "corr",
        "columns": 2,
        "null share (all nulls)": "100.00%",
        "no row for the key (merge-made)": "0.00%",
        "null in the source's rows": "100.00%",
        "newest day (all nulls)": "-",
        "all-null columns": 2,
        # corr's threshold: its expected share plus its own tolerance (0.53 + 0.30).
        "allowed (expected + tolerance)": "83.0% (53.0% + 30 points)",
        "ok": "NO",
    }
    # The worst family's excess over its allowed share, and 0: what the UI plots.
    assert nulls.metadata["actual"] == pytest.approx(1.0 - 0.83)
    assert nulls.metadata["threshold"] == 0.0
    assert nulls.metadata["families_over"] == 1 and nulls.metadata["all_null_columns"] == 2
    dead = ["corr_etf_idx_spy__corr_45", "corr_etf_idx_spy__n_45"]
    assert column(nulls, "all_null", "column") == dead
    assert column(nulls, "all_null", "family") == ["corr", "corr"]
    assert column(nulls, "worst_columns", "column")[:2] == dead
    assert "corr 100.0% > 83.0% (53.0% + 30 points)" in str(nulls.metadata["summary"])
    assert "| 100.00% | - | 2 | 83.0% (53.0% + 30 points) | NO |" in (
        report.family_table_markdown()
    )
    assert "no coverage record" in str(nulls.metadata["merge_vs_source"])


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
    assert outcome.metadata["families_over"] == 0 and outcome.metadata["actual"] < 0.0
    assert column(outcome, "all_null", "column") == ["agg_bqx__agg_std_45"]
    assert column(outcome, "families", "allowed (expected + tolerance)") == [
        "65.0% (60.0% + 5 points)",
        "7.4% (2.4% + 5 points)",
        "32.4% (2.4% + 30 points)",
    ]


def test_null_completeness_reads_columns_without_statistics(
    tmp_path: Path, expectation: Expectation
) -> None:
    cols = good_columns(expectation)
    cols["base_bqx__bqx_45"] = pa.nulls(ROWS, pa.float64())
    path = write(tmp_path / "nostats.parquet", cols, write_statistics=[KEY])
    outcome = run(path, expectation).outcome("null_completeness")
    assert column(outcome, "all_null", "column") == ["base_bqx__bqx_45"]
    assert "columns without statistics read" in str(outcome.metadata["null_counts_from"])


def test_a_family_over_its_expected_share_fails_a_first_build(tmp_path: Path) -> None:
    def late(data: merged.Data) -> None:  # tri starts at 60% of the spine: 60% null, expected 24%
        keys, cols = data["tri_agg_bqx_eur_usd_gbp"]
        cut = int(merged.ROWS * 0.6) - merged.ROWS // 5
        data["tri_agg_bqx_eur_usd_gbp"] = (keys[cut:], {c: v[cut:] for c, v in cols.items()})

    report = merged.build(tmp_path, late)
    nulls = report.outcome("null_completeness")
    assert not nulls.passed
    tri = next(r for r in listed(nulls, "families") if r["family"] == "tri")
    assert tri["null share (all nulls)"] == "60.00%" and tri["ok"] == "NO"
    assert nulls.metadata["actual"] == pytest.approx(0.6 - 0.39)
    assert "tri 60.0% > 39.0% (24.0% + 15 points)" in str(nulls.metadata["summary"])
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
    agg = next(r for r in listed(outcome, "families") if r["family"] == "agg")
    # The reference, the first day's same minutes, has agg's 45 minutes of warm-up.
    assert agg == {
        "family": "agg",
        "newest day: null values": "69.44%",
        "same minutes, previous trading day: null values": "3.12%",
        "excess": "+66.32 points",
        "ok": "NO",
    }
    assert outcome.metadata["actual"] == pytest.approx(1000 / 1440 - 45 / 1440)
    assert outcome.metadata["threshold"] == Thresholds().newest_null_tolerance
    assert column(outcome, "worst_tables", "table") == ["agg_bqx_eurusd"]
    assert "agg 69.4% vs 3.1%" in str(outcome.metadata["summary"])


def _clock_nulls(spine: np.ndarray) -> merged.Data:
    """The clean data with corr as a source may also give it: a row every minute, its value
    null while the ETF does not quote (08:00-20:00 UTC)."""
    data = merged.clean_data(spine)
    minute_of_day = (spine // merged.MINUTE) % 1440
    values = np.random.default_rng(5).uniform(-1, 1, len(spine))
    values[(minute_of_day < 8 * 60) | (minute_of_day >= 20 * 60)] = np.nan
    data["corr_etf_idx_eurusd_spy"] = (spine, {"corr_45": values})
    return data


# The newest day of a spine that ends at 07:59 has corr's values all null and the whole file
# half: judged against the whole file, a clean file failed or passed by the hour it ended.
@pytest.mark.parametrize("end", ["00:59", "07:59", "08:30", "13:00", "19:59", "23:59"])
def test_nulls_that_follow_the_clock_pass_newest_rows_whatever_hour_the_spine_ends(
    tmp_path: Path, end: str
) -> None:
    hours, minutes = map(int, end.split(":"))
    last = merged.START_US + (2 * 1440 + hours * 60 + minutes) * merged.MINUTE
    spine = last - np.arange(merged.ROWS, dtype=np.int64)[::-1] * merged.MINUTE
    path = merged.merged(tmp_path, _clock_nulls(spine), spine=spine)
    report = merged.validate(path)
    outcome = report.outcome("newest_rows")
    assert report.passed, report.summary()
    corr = next(r for r in listed(outcome, "families") if r["family"] == "corr")
    reference = corr["same minutes, previous trading day: null values"]
    assert corr["newest day: null values"] == reference
    assert outcome.metadata["actual"] == 0.0
    # Rows whose values are gone for the newest day's second half are still caught.
    newest = hours * 60 + minutes + 1
    data = _clock_nulls(spine)
    for values in data["agg_bqx_eurusd"][1].values():
        values[-(newest // 2) :] = np.nan
    failed = merged.validate(merged.merged(tmp_path / "tail", data, spine=spine))
    # (a long enough stretch takes agg over its expected share of the whole file too)
    assert "newest_rows" in failed.failed, failed.summary()
    assert set(failed.failed) <= {"newest_rows", "null_completeness"}
    assert column(failed.outcome("newest_rows"), "worst_tables", "table") == ["agg_bqx_eurusd"]


def test_without_a_coverage_record_the_last_row_group_stands_for_the_newest_rows(
    tmp_path: Path, expectation: Expectation
) -> None:
    def null_tail(cols: Columns) -> None:  # the last row group's agg values are null
        mask = np.arange(ROWS) >= ROWS - ROWS % ROW_GROUP
        for name in ("agg_bqx__agg_mean_45", "agg_bqx__agg_std_45"):
            cols[name] = pa.array(np.ones(ROWS), mask=mask)

    clean = run(build(tmp_path, expectation), expectation).outcome("newest_rows")
    assert clean.passed and "(no coverage record)" in str(clean.metadata["summary"])
    outcome = run(build(tmp_path, expectation, null_tail), expectation).outcome("newest_rows")
    assert not outcome.passed
    meta = outcome.metadata
    assert meta["actual"] == pytest.approx(meta["newest_null_share"] - meta["reference_null_share"])
    assert meta["actual"] > meta["threshold"] == Thresholds().newest_null_tolerance


def test_a_single_row_group_without_a_coverage_record_needs_require_coverage_off(
    tmp_path: Path, expectation: Expectation
) -> None:
    path = write(tmp_path / "one.parquet", good_columns(expectation))
    # One row group: no "last" one to compare with the rest.
    pq.write_table(pq.read_table(path), path)
    assert run(path, expectation).outcome("newest_rows").passed  # require_coverage=False
    required = run(path, expectation, Thresholds(min_rows=1)).outcome("newest_rows")
    assert not required.passed
    assert required.metadata["require_coverage"] is True
    assert required.metadata["actual"] > required.metadata["threshold"]
    assert "no coverage record in the footer" in str(required.metadata["summary"])
