"""row_count, column_count, target_horizons and key_integrity: each passes a good file and fails
a file broken the way the first team's was."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import KEY
from bqx_assets_tests.core.gate.handmade import (
    ROW_GROUP,
    ROWS,
    Columns,
    build,
    good_columns,
    run,
)
from bqx_assets_tests.core.gate.listings import column, listed


# -- row_count -------------------------------------------------------------------------------
def test_row_count_fails_on_fan_out_from_duplicate_keys(
    tmp_path: Path, expectation: Expectation
) -> None:
    # A feature table with duplicate timestamps, left-joined: 30 spine rows appear twice.
    def fan_out(cols: Columns) -> None:
        index = np.sort(np.concatenate([np.arange(ROWS), np.arange(50, 80)]))
        for name in cols:
            cols[name] = cols[name].take(pa.array(index))

    report = run(build(tmp_path, expectation, fan_out), expectation)
    rows = report.outcome("row_count")
    assert not rows.passed
    assert rows.metadata["actual"] == float(ROWS + 30)
    assert rows.metadata["threshold"] == float(ROWS)
    assert rows.metadata["difference"] == 30
    assert "fan-out" in str(rows.metadata["summary"])
    keys = report.outcome("key_integrity")
    assert not keys.passed
    # Each repeated key is also a step that does not go forward.
    duplicates, steps = listed(keys, "problems")
    assert duplicates["problem"] == "duplicate keys" and duplicates["keys"] == 30
    assert len(str(duplicates["examples"]).split(", ")) == 5
    assert steps["problem"] == "keys not after the previous one" and steps["keys"] == 30
    assert keys.metadata["actual"] == 60.0 and keys.metadata["threshold"] == 0.0
    assert keys.metadata["distinct"] == ROWS
    assert not report.passed


def test_row_count_fails_outside_the_bounds(tmp_path: Path, expectation: Expectation) -> None:
    report = run(build(tmp_path, expectation), expectation, Thresholds(min_rows=150_000))
    rows = report.outcome("row_count")
    assert not rows.passed
    assert (rows.metadata["min_rows"], rows.metadata["max_rows"]) == (
        150_000,
        Thresholds().max_rows,
    )
    assert f"outside the bounds 150,000-{Thresholds().max_rows:,}" in str(rows.metadata["summary"])


def test_row_count_names_rows_lost(tmp_path: Path, expectation: Expectation) -> None:
    def lose(cols: Columns) -> None:
        for name in cols:
            cols[name] = cols[name].slice(0, ROWS - 7)

    rows = run(build(tmp_path, expectation, lose), expectation).outcome("row_count")
    assert not rows.passed and rows.metadata["difference"] == -7
    assert rows.metadata["summary"] == (
        f"{ROWS - 7:,} rows, 7 fewer than the spine's {ROWS:,}; within the bounds 100-1,000"
    )


# -- column_count ----------------------------------------------------------------------------
def test_column_count_names_missing_unexpected_and_duplicate_columns(
    tmp_path: Path, expectation: Expectation
) -> None:
    # Colliding tables silently skipped (missing) and a column nobody asked for (unexpected).
    def change(cols: Columns) -> None:
        del cols["corr_etf_idx_spy__corr_45"]
        cols["mystery__x_45"] = cols["agg_bqx__agg_mean_45"]

    report = run(build(tmp_path, expectation, change), expectation)
    column = report.outcome("column_count")
    assert not column.passed
    assert column.metadata["actual"] == column.metadata["threshold"] == len(expectation.columns)
    assert listed(column, "columns") == [
        {"column": "corr_etf_idx_spy__corr_45", "problem": "missing"},
        {"column": "mystery__x_45", "problem": "unexpected"},
    ]
    assert (column.metadata["missing_count"], column.metadata["unexpected_count"]) == (1, 1)
    nulls = report.outcome("null_completeness")
    unexpected = next(r for r in listed(nulls, "families") if r["family"] == "unexpected")
    assert unexpected["columns"] == 1


def test_column_count_fails_on_duplicate_names(tmp_path: Path, expectation: Expectation) -> None:
    cols = good_columns(expectation)
    names = [*cols, "agg_bqx__agg_mean_45"]
    table = pa.Table.from_arrays([*cols.values(), cols["agg_bqx__agg_mean_45"]], names=names)
    pq.write_table(table, tmp_path / "dup.parquet", row_group_size=ROW_GROUP)
    column = run(tmp_path / "dup.parquet", expectation).outcome("column_count")
    assert not column.passed
    assert listed(column, "columns") == [
        {"column": "agg_bqx__agg_mean_45", "problem": "duplicated"}
    ]
    assert column.metadata["duplicate_count"] == 1


def test_column_count_passes_columns_out_of_catalog_order_and_says_so(
    tmp_path: Path, expectation: Expectation
) -> None:
    def swap(cols: Columns) -> None:
        cols["agg_bqx__agg_mean_45"] = cols.pop("agg_bqx__agg_mean_45")  # moved to the end

    column = run(build(tmp_path, expectation, swap), expectation).outcome("column_count")
    assert column.passed and column.metadata["in_catalog_order"] is False
    assert "not in catalog order" in str(column.metadata["summary"])


# -- target_horizons -------------------------------------------------------------------------
def test_target_horizons_fails_on_a_missing_horizon_column(
    tmp_path: Path, expectation: Expectation
) -> None:
    report = run(build(tmp_path, expectation, lambda c: c.pop("target_bqx90_h30")), expectation)
    target = report.outcome("target_horizons")
    assert not target.passed
    assert (target.metadata["targets_ok"], target.metadata["targets_expected"]) == (3, 4)
    assert target.metadata["missing"] == ["target_bqx90_h30"]
    assert target.metadata["missing_horizons"] == "30"
    assert target.metadata["missing_windows"] == "90"
    assert listed(target, "targets") == [{"target": "target_bqx90_h30", "problem": "missing"}]
    assert not report.outcome("column_count").passed


def test_target_horizons_fails_on_nulls_and_non_float_targets(
    tmp_path: Path, expectation: Expectation
) -> None:
    def change(cols: Columns) -> None:
        mask = np.arange(ROWS) < 10  # 5% null: over the 1% threshold
        cols["target_bqx45_h15"] = pa.array(np.zeros(ROWS), mask=mask)
        cols["target_bqx45_h30"] = pa.array(np.arange(ROWS))

    target = run(build(tmp_path, expectation, change), expectation).outcome("target_horizons")
    assert not target.passed
    assert target.metadata["threshold"] == Thresholds().target_null_share == 0.01
    assert target.metadata["actual"] == 0.05  # the worst target's null share
    assert listed(target, "targets") == [
        {"target": "target_bqx45_h30", "problem": "type int64, not float"},
        {"target": "target_bqx45_h15", "problem": "5.00% null > 1.0%"},
    ]


# -- key_integrity ---------------------------------------------------------------------------
def test_key_integrity_fails_on_1970_keys_from_a_unit_bug(
    tmp_path: Path, expectation: Expectation
) -> None:
    # Microseconds read as nanoseconds: the values shrink 1000x and land in January 1970.
    def change(cols: Columns) -> None:
        us = np.asarray(cols[KEY].cast(pa.int64()))
        cols[KEY] = pa.array(us // 1000, pa.timestamp("us", tz="UTC"))

    keys = run(build(tmp_path, expectation, change), expectation).outcome("key_integrity")
    assert not keys.passed
    (outside,) = listed(keys, "problems")
    assert outside["problem"] == "keys outside the range" and outside["keys"] == ROWS
    assert str(outside["examples"]).startswith("1970-01-")
    assert str(keys.metadata["first_key"]).startswith("1970-01-")
    assert str(keys.metadata["key_range"]).startswith("[2000-01-01")
    assert keys.metadata["actual"] == float(ROWS)


def test_key_integrity_fails_on_the_wrong_unit(tmp_path: Path, expectation: Expectation) -> None:
    def change(cols: Columns) -> None:
        cols[KEY] = cols[KEY].cast(pa.timestamp("ns", tz="UTC"))

    keys = run(build(tmp_path, expectation, change), expectation).outcome("key_integrity")
    assert not keys.passed
    assert keys.metadata["key_type"] == "timestamp[ns, tz=UTC]"
    assert keys.metadata["actual"] == 1.0 and "problems" not in keys.metadata  # the type only


def test_key_integrity_fails_on_unsorted_keys_and_a_narrow_range(
    tmp_path: Path, expectation: Expectation
) -> None:
    def change(cols: Columns) -> None:
        order = np.arange(ROWS)
        order[[10, 11]] = order[[11, 10]]
        cols[KEY] = cols[KEY].take(pa.array(order))

    path = build(tmp_path, expectation, change)
    keys = run(path, expectation).outcome("key_integrity")
    assert not keys.passed
    assert column(keys, "problems", "problem") == ["keys not after the previous one"]
    assert column(keys, "problems", "keys") == [1]
    start = datetime(2024, 1, 2, 1, tzinfo=UTC)  # the first hour is outside
    narrow = Thresholds(min_rows=1, key_start=start, key_end=datetime(2030, 1, 1, tzinfo=UTC))
    outcome = run(path, expectation, narrow).outcome("key_integrity")
    assert column(outcome, "problems", "keys") == [1, 60]
    assert outcome.metadata["key_range"] == (
        "[2024-01-02T01:00:00+00:00 .. 2030-01-01T00:00:00+00:00)"
    )


def test_key_integrity_fails_on_null_and_non_timestamp_keys(
    tmp_path: Path, expectation: Expectation
) -> None:
    def null_keys(cols: Columns) -> None:
        mask = np.zeros(ROWS, dtype=bool)
        mask[[3, 4]] = True
        us = np.asarray(cols[KEY].cast(pa.int64()))
        cols[KEY] = pa.array(us, pa.timestamp("us", tz="UTC"), mask=mask)

    keys = run(build(tmp_path, expectation, null_keys), expectation).outcome("key_integrity")
    assert not keys.passed and listed(keys, "problems")[0] == {
        "problem": "null keys",
        "keys": 2,
        "examples": "",
    }
    assert "2 null keys" in str(keys.metadata["summary"])

    text = run(
        build(tmp_path, expectation, lambda c: c.update({KEY: c[KEY].cast(pa.string())})),
        expectation,
    ).outcome("key_integrity")
    assert not text.passed and "keys are not timestamps" in str(text.metadata["summary"])


def test_duplicated_key_column_fails_key_integrity(
    tmp_path: Path, expectation: Expectation
) -> None:
    cols = good_columns(expectation)
    table = pa.Table.from_arrays([*cols.values(), cols[KEY]], names=[*cols, KEY])
    pq.write_table(table, tmp_path / "dupkey.parquet")
    report = run(tmp_path / "dupkey.parquet", expectation)
    assert listed(report.outcome("column_count"), "columns") == [
        {"column": KEY, "problem": "duplicated"}
    ]
    keys = report.outcome("key_integrity")
    assert not keys.passed and keys.metadata["problem"] == "2 columns"


def test_a_file_without_the_key_column_fails_key_integrity(
    tmp_path: Path, expectation: Expectation
) -> None:
    keys = run(build(tmp_path, expectation, lambda c: c.pop(KEY)), expectation).outcome(
        "key_integrity"
    )
    assert not keys.passed
    assert keys.metadata["summary"] == f"no {KEY} column" and keys.metadata["problem"] == "missing"
    assert keys.metadata["actual"] > keys.metadata["threshold"]
