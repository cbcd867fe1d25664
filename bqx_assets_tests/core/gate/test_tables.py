"""table_coverage, from the coverage record the merge writes in the footer: each fault the first
team met in its tables is caught by the check that names the table."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.merge.coverage import COVERAGE_KEY, Coverage, TableCoverage
from bqx_assets.core.merge.reuse import ROW_GROUPS_KEY
from bqx_assets_tests.core.gate import handmade
from bqx_assets_tests.core.gate.listings import column, listed
from bqx_assets_tests.core.gate.merged import (
    MINUTE,
    ROWS,
    SPINE,
    START_US,
    Data,
    build,
    clean_data,
    merged,
)


# -- the coverage record ---------------------------------------------------------------------
def test_the_merge_records_each_tables_coverage_in_the_footer(tmp_path: Path) -> None:
    path = merged(tmp_path, clean_data())
    metadata = pq.read_metadata(path).metadata
    # Only the coverage record and the row groups' record (what a refresh copies from): the
    # pieces' own metadata (ARROW:schema) stays out.
    assert set(metadata) == {COVERAGE_KEY.encode(), ROW_GROUPS_KEY.encode()}
    coverage = Coverage.from_metadata(metadata)
    assert coverage is not None
    assert (coverage.spine_rows, coverage.newest_rows) == (ROWS, 1440)
    assert coverage.newest_from == START_US + 1440 * MINUTE
    agg, corr, tri = coverage.tables
    assert (agg.table, agg.first_column, agg.columns) == ("agg_bqx_eurusd", 2, 2)
    assert (agg.matched, agg.tail_missing, agg.tail_expected, agg.longest_gap) == (ROWS, 0, 0, 0)
    assert agg.source_nulls == (45, 45) and agg.newest_nulls == (0, 0)
    assert (corr.matched, corr.newest_matched) == (2 * 720, 720)
    assert corr.first_key == START_US + 8 * 60 * MINUTE
    assert corr.last_key == START_US + (1440 + 20 * 60 - 1) * MINUTE
    assert corr.tail_missing == 4 * 60 and corr.longest_gap == 12 * 60
    assert corr.tail_expected == 0  # 20:00-24:00 the day before: the ETF was closed too
    assert corr.newest_nulls == (720,)  # the ETF's closed hours of the newest day
    # The newest day's reference minutes: the first day, where the ETF quoted 720 of them.
    assert coverage.reference_rows == 1440
    assert (corr.reference_matched, corr.reference_nulls) == (720, (720,))
    assert (agg.reference_matched, agg.reference_nulls) == (1440, (45, 45))  # its warm-up
    assert (tri.matched, tri.first_key, tri.first_column) == (ROWS - ROWS // 5, SPINE[576], 5)


def test_a_large_record_is_compressed_and_round_trips() -> None:
    tables = tuple(
        TableCoverage(
            f"t{i}", i * 25, 25, 9, 8, 1, 2, 3, 0, 0, 4, (1,) * 25, (0,) * 25, 2, (1,) * 25
        )
        for i in range(667)
    )
    coverage = Coverage(10, 1, 2, 1, 5, tables, 3)
    encoded = coverage.encode()
    assert encoded.startswith("zstd+base64:") and len(encoded) < 30_000
    assert Coverage.decode(encoded) == coverage


def test_a_clean_merged_file_covers_the_spine(tmp_path: Path) -> None:
    outcome = build(tmp_path).outcome("table_coverage")
    assert outcome.passed, outcome.metadata
    meta = outcome.metadata
    assert (meta["actual"], meta["threshold"]) == (0.0, 0.0)  # short tables, none allowed
    assert (meta["tables"], meta["low_coverage"], meta["stopped_early"]) == (3, 0, 0)
    assert "short_tables" not in meta
    th = Thresholds()
    assert meta["tail_tolerance_rows"] == th.tail_tolerance_rows
    # The summary states the bounds it applied.
    assert "each at least its family's share (corr 10%, others 50%)" in str(meta["summary"])


# -- faults in the tables, each caught and named ---------------------------------------------
def test_a_table_cut_at_its_own_limit_fails_table_coverage_naming_it(tmp_path: Path) -> None:
    def cut(data: Data) -> None:  # the first team's ragged tail: LIMIT per table
        keys, cols = data["agg_bqx_eurusd"]
        data["agg_bqx_eurusd"] = (keys[:-100], {c: v[:-100] for c, v in cols.items()})

    report = build(tmp_path, cut)
    outcome = report.outcome("table_coverage")
    assert not outcome.passed and report.failed == ("table_coverage",)
    (agg,) = listed(outcome, "short_tables")
    assert agg["table"] == "agg_bqx_eurusd" and agg["newest minutes missed"] == 100
    assert agg["tail minutes due"] == 100 and agg["family"] == "agg"
    summary = str(outcome.metadata["summary"])
    assert "agg_bqx_eurusd misses 100 of the 1,440 newest minutes" in summary
    assert outcome.metadata["actual"] == 1.0 > outcome.metadata["threshold"]


def test_a_stale_source_fails_table_coverage(tmp_path: Path) -> None:
    def stale(data: Data) -> None:  # the tri feed stopped a day ago
        keys, cols = data["tri_agg_bqx_eur_usd_gbp"]
        keep = keys < START_US + 1440 * MINUTE
        data["tri_agg_bqx_eur_usd_gbp"] = (keys[keep], {c: v[keep] for c, v in cols.items()})

    outcome = build(tmp_path, stale).outcome("table_coverage")
    assert not outcome.passed
    (info,) = listed(outcome, "short_tables")
    assert info["table"] == "tri_agg_bqx_eur_usd_gbp" and info["newest minutes missed"] == 1440
    assert "stops 1,440 rows" in str(info["why"])
    # Due: the minutes of the newest day the tri source had on the first day (from 09:36).
    assert info["tail minutes due"] == 1440 - ROWS // 5


def test_keys_in_the_wrong_unit_fail_table_coverage_and_null_completeness(
    tmp_path: Path,
) -> None:
    def unit_bug(data: Data) -> None:  # microseconds read as nanoseconds: 1970 keys
        keys, cols = data["corr_etf_idx_eurusd_spy"]
        data["corr_etf_idx_eurusd_spy"] = (keys // 1000, cols)

    report = build(tmp_path, unit_bug)
    assert set(report.failed) == {"null_completeness", "table_coverage"}
    (info,) = listed(report.outcome("table_coverage"), "short_tables")
    assert info["table"] == "corr_etf_idx_eurusd_spy" and info["covers"] == "0.0%"
    assert "covers 0.0% of the spine < 10%" in str(info["why"])
    nulls = report.outcome("null_completeness")
    assert column(nulls, "all_null", "column") == ["corr_etf_idx_spy__corr_45"]
    corr = next(r for r in listed(nulls, "families") if r["family"] == "corr")
    assert corr["no row for the key (merge-made)"] == "100.00%"


# -- a file the merge did not write ----------------------------------------------------------
def test_a_file_without_a_coverage_record_fails_unless_it_is_not_required(
    tmp_path: Path, expectation: Expectation
) -> None:
    path = handmade.build(tmp_path, expectation)
    required = handmade.run(path, expectation, Thresholds(min_rows=1)).outcome("table_coverage")
    assert not required.passed
    assert required.metadata["summary"] == (
        "no coverage record in the footer (the file was not written by bqx merge)"
    )
    assert required.metadata["require_coverage"] is True
    assert (required.metadata["actual"], required.metadata["threshold"]) == (1.0, 0.0)
    optional = handmade.run(path, expectation).outcome("table_coverage")  # require_coverage off
    assert optional.passed and str(optional.metadata["summary"]).endswith("; not required")
    assert optional.metadata["actual"] == optional.metadata["threshold"] == 1.0
