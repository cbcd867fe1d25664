"""Gate checks: each passes a good file and fails a file broken the way the first team's was."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets import cli
from bqx_assets.core.catalog import Catalog, Column, Table, TargetsTable
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.validation import (
    CHECK_NAMES,
    Expectation,
    Thresholds,
    ValidationReport,
    validate_training_file,
)
from bqx_assets.core.layout import KEY

PAIR = "eurusd"
ROWS = 200
ROW_GROUP = 64  # several row groups, so that footer statistics are summed across them
TARGETS = ("target_bqx45_h15", "target_bqx45_h30", "target_bqx90_h15", "target_bqx90_h30")
START_US = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
TH = Thresholds(min_rows=100, max_rows=1_000, require_coverage=False)
"""Hand-made files carry no coverage record: the merge-built files of test_profile.py do."""

Columns = dict[str, pa.Array]


def tiny_catalog() -> Catalog:
    """One pair, three feature tables in three families; base_bqx carries a target_ column."""
    ds = "features"

    def table(name: str, family: str, scope: str, cols: list[tuple[str, str]]) -> Table:
        return Table(name, ds, family, scope, (PAIR,), tuple(Column(*c) for c in cols))  # type: ignore[arg-type]

    agg = [("agg_mean_45", "FLOAT64"), ("agg_std_45", "FLOAT64")]
    base = [("bqx_45", "FLOAT64"), ("target_45", "FLOAT64")]
    corr = [("corr_45", "FLOAT64"), ("n_45", "INT64")]
    tables = [
        table("agg_bqx_eurusd", "agg", "pair", agg),
        table("base_bqx_eurusd", "base", "pair", base),
        table("corr_etf_idx_eurusd_spy", "corr", "corr", corr),
    ]
    targets = TargetsTable(
        "targets_eurusd",
        "analytics",
        PAIR,
        (Column("bqx_45", "FLOAT64"), *(Column(t, "FLOAT64") for t in TARGETS)),
    )
    return Catalog("bqx-ml", ds, "analytics", (PAIR,), {t.name: t for t in tables}, {PAIR: targets})


@pytest.fixture
def expectation() -> Expectation:
    return Expectation.for_pair(tiny_catalog(), PAIR, ROWS)


def good_columns(exp: Expectation, rows: int = ROWS) -> Columns:
    """A file that passes: minute keys, targets null only in the last row, no null features."""
    rng = np.random.default_rng(1)
    keys = START_US + np.arange(rows, dtype=np.int64) * 60_000_000
    cols: Columns = {KEY: pa.array(keys, pa.timestamp("us", tz="UTC"))}
    tail = np.zeros(rows, dtype=bool)
    tail[-1:] = True  # look-ahead windows leave the end of each target null
    for t in exp.targets:
        cols[t] = pa.array(rng.normal(0, 0.087, rows), mask=tail)
    for name in exp.columns:
        if name.endswith("n_45"):
            cols[name] = pa.array(rng.integers(0, 9, rows))
        elif name not in cols:
            cols[name] = pa.array(rng.normal(0, 1, rows))
    return cols


def write(path: Path, cols: Columns, **options: object) -> Path:
    table = pa.table(list(cols.values()), names=list(cols))
    pq.write_table(table, path, row_group_size=ROW_GROUP, compression="zstd", **options)  # type: ignore[arg-type]
    return path


def build(
    tmp_path: Path, exp: Expectation, change: Callable[[Columns], None] | None = None
) -> Path:
    cols = good_columns(exp)
    if change:
        change(cols)
    return write(tmp_path / "training_eurusd.parquet", cols)


def run(path: Path, exp: Expectation, th: Thresholds = TH) -> ValidationReport:
    return validate_training_file(path, exp, th)


# -- the file built to pass ------------------------------------------------------------------
def test_good_file_passes_every_check(tmp_path: Path, expectation: Expectation) -> None:
    report = run(build(tmp_path, expectation), expectation)
    assert [o.name for o in report.outcomes] == list(CHECK_NAMES)
    assert report.passed, report.summary()
    assert (report.rows, report.columns) == (ROWS, len(expectation.columns))
    assert report.outcome("row_count").metadata["actual"] == ROWS
    nulls = report.outcome("null_completeness").metadata
    none = {"null_share": 0.0, "merge_null_share": 0.0, "source_null_share": 0.0}
    assert nulls["families"] == {
        "agg": {"columns": 2, **none},
        "base": {"columns": 1, **none},
        "corr": {"columns": 2, **none},
    }
    target = report.outcome("target_horizons").metadata
    assert target["actual"] == 4 and target["worst_null_share"] == pytest.approx(1 / ROWS)
    table = report.family_table_markdown()
    # agg expects production's 2.4% for "other" families, plus the 5-point tolerance.
    assert table.splitlines()[2] == "| agg | 2 | 0.00% | 0.00% | 0.00% | - | 0 | 7.4% | yes |"
    json.dumps(report.to_dict())  # metadata is JSON-able


def test_expectation_for_pair_leaves_out_leak_columns() -> None:
    exp = Expectation.for_pair(tiny_catalog(), PAIR, ROWS)
    assert exp.columns[: 1 + len(TARGETS)] == (KEY, *TARGETS)
    assert "base_bqx__target_45" not in exp.columns
    assert exp.family_of["corr_etf_idx_spy__corr_45"] == "corr"


def test_expectation_of_the_production_catalog(tmp_path: Path) -> None:
    catalog = Catalog.load()
    exp = Expectation.for_pair(catalog, PAIR, 3)
    assert len(exp.columns) == 17_031 and len(exp.targets) == 49
    assert len(exp.family_of) == 17_031 - 50
    assert sum(f == "tri" for f in exp.family_of.values()) == 6_460
    # A file with the key and targets only: every catalog feature is reported missing, by count.
    keys = pa.array(START_US + np.arange(3) * 60_000_000, pa.timestamp("us", tz="UTC"))
    cols: Columns = {KEY: keys, **{t: pa.array([0.1, 0.2, 0.3]) for t in exp.targets}}
    report = run(write(tmp_path / "t.parquet", cols), exp, Thresholds(min_rows=1))
    column = report.outcome("column_count").metadata
    assert not report.outcome("column_count").passed
    assert column["missing_count"] == 16_981 and len(column["missing"]) == 20
    assert report.outcome("target_horizons").passed


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
    assert rows.metadata["actual"] == ROWS + 30
    assert rows.metadata["expected"] == ROWS
    assert rows.metadata["difference"] == 30
    assert "fan-out" in rows.metadata["summary"]
    keys = report.outcome("key_integrity")
    assert not keys.passed
    assert keys.metadata["actual"]["duplicates"] == 30
    assert keys.metadata["actual"]["distinct"] == ROWS
    assert len(keys.metadata["duplicate_examples"]) == 5
    assert not report.passed


def test_row_count_fails_outside_the_bounds(tmp_path: Path, expectation: Expectation) -> None:
    report = run(build(tmp_path, expectation), expectation, Thresholds(min_rows=150_000))
    rows = report.outcome("row_count")
    assert not rows.passed
    assert rows.metadata["threshold"] == {"min_rows": 150_000, "max_rows": 200_000}
    assert "outside the bounds" in rows.metadata["summary"]


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
    assert column.metadata["actual"] == column.metadata["expected"] == len(expectation.columns)
    assert column.metadata["missing"] == ["corr_etf_idx_spy__corr_45"]
    assert column.metadata["unexpected"] == ["mystery__x_45"]
    nulls = report.outcome("null_completeness").metadata
    assert nulls["families"]["unexpected"]["columns"] == 1


def test_column_count_fails_on_duplicate_names(tmp_path: Path, expectation: Expectation) -> None:
    cols = good_columns(expectation)
    names = [*cols, "agg_bqx__agg_mean_45"]
    table = pa.Table.from_arrays([*cols.values(), cols["agg_bqx__agg_mean_45"]], names=names)
    pq.write_table(table, tmp_path / "dup.parquet", row_group_size=ROW_GROUP)
    column = run(tmp_path / "dup.parquet", expectation).outcome("column_count")
    assert not column.passed
    assert column.metadata["duplicates"] == ["agg_bqx__agg_mean_45"]


# -- target_horizons -------------------------------------------------------------------------
def test_target_horizons_fails_on_a_missing_horizon_column(
    tmp_path: Path, expectation: Expectation
) -> None:
    report = run(build(tmp_path, expectation, lambda c: c.pop("target_bqx90_h30")), expectation)
    target = report.outcome("target_horizons")
    assert not target.passed
    assert target.metadata["actual"] == 3 and target.metadata["expected"] == 4
    assert target.metadata["missing"] == ["target_bqx90_h30"]
    assert target.metadata["missing_horizons"] == [30]
    assert target.metadata["missing_windows"] == [90]
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
    assert target.metadata["threshold"] == 0.01
    assert target.metadata["over_threshold"] == {"target_bqx45_h15": 0.05}
    assert target.metadata["not_float"] == {"target_bqx45_h30": "int64"}


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
    assert "| 100.00% | - | 2 | 83.0% | NO |" in report.family_table_markdown()


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
    assert keys.metadata["actual"]["out_of_range"] == ROWS
    assert keys.metadata["actual"]["min"].startswith("1970-01-")
    assert keys.metadata["out_of_range_examples"][0].startswith("1970-01-")
    assert keys.metadata["threshold"]["key_range"][0].startswith("2000-01-01")


def test_key_integrity_fails_on_the_wrong_unit(tmp_path: Path, expectation: Expectation) -> None:
    def change(cols: Columns) -> None:
        cols[KEY] = cols[KEY].cast(pa.timestamp("ns", tz="UTC"))

    keys = run(build(tmp_path, expectation, change), expectation).outcome("key_integrity")
    assert not keys.passed
    assert keys.metadata["actual"]["type"] == "timestamp[ns, tz=UTC]"
    assert keys.metadata["actual"]["out_of_range"] == 0


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
    assert keys.metadata["actual"]["non_increasing"] == 1
    assert keys.metadata["actual"]["duplicates"] == 0
    start = datetime(2024, 1, 2, 1, tzinfo=UTC)  # the first hour is outside
    narrow = Thresholds(min_rows=1, key_range=(start, datetime(2030, 1, 1, tzinfo=UTC)))
    assert (
        run(path, expectation, narrow).outcome("key_integrity").metadata["actual"]["out_of_range"]
        == 60
    )


# -- no_target_leakage -----------------------------------------------------------------------
def test_no_target_leakage_fails_on_a_leaked_target_column(
    tmp_path: Path, expectation: Expectation
) -> None:
    # The first team's file: base_bqx_{pair}.target_45 prefixed and treated as a feature.
    leaky = Expectation(
        PAIR,
        ROWS,
        (*expectation.columns, "base_bqx__target_45", "base_bqx_target_90"),
        expectation.targets,
        {**expectation.family_of, "base_bqx__target_45": "base", "base_bqx_target_90": "base"},
    )

    def change(cols: Columns) -> None:
        cols["base_bqx__target_45"] = pa.array(np.linspace(-1, 1, ROWS))
        cols["base_bqx_target_90"] = pa.array(np.linspace(-2, 2, ROWS))

    path = build(tmp_path, leaky, change)
    report = run(path, leaky)
    leak = report.outcome("no_target_leakage")
    assert not leak.passed
    assert leak.metadata["by_name"] == ["base_bqx__target_45", "base_bqx_target_90"]
    assert leak.metadata["actual"] == 2 and leak.metadata["expected"] == 0
    assert report.outcome("column_count").passed  # only the leak check catches it
    allowed = Thresholds(min_rows=1, leak_allow=("base_bqx__target_45", "base_bqx_target_90"))
    assert run(path, leaky, allowed).outcome("no_target_leakage").passed


def test_no_target_leakage_finds_a_target_copied_under_a_feature_name(
    tmp_path: Path, expectation: Expectation
) -> None:
    def change(cols: Columns) -> None:
        cols["agg_bqx__agg_mean_45"] = cols["target_bqx90_h15"]

    path = build(tmp_path, expectation, change)
    leak = run(path, expectation).outcome("no_target_leakage")
    assert not leak.passed
    assert leak.metadata["by_value"] == {"agg_bqx__agg_mean_45": "target_bqx90_h15"}
    no_values = Thresholds(min_rows=1, value_leak=False)
    assert run(path, expectation, no_values).outcome("no_target_leakage").passed


# -- errors and the command ------------------------------------------------------------------
def test_unreadable_file_raises_naming_the_file(tmp_path: Path, expectation: Expectation) -> None:
    path = tmp_path / "training_eurusd.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(ValidationError, match=r"eurusd.*training_eurusd\.parquet"):
        run(path, expectation)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    return tiny_catalog().dump(tmp_path / "catalog.json")


def test_command_passes_with_exit_0_and_a_json_line(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = build(tmp_path, expectation)
    argv = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    argv += ["--no-require-coverage"]  # a hand-made file: no merge coverage record
    assert cli.main([*argv, "--spine-rows", str(ROWS), "--min-rows", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "PASSED" in out[0]
    result = json.loads(out[-1])
    assert result["passed"] is True and result["rows"] == ROWS
    assert result["row_groups"] == 4  # 200 rows in groups of 64
    assert set(result["checks"]) == set(CHECK_NAMES)


def test_command_fails_with_exit_1_and_names_the_check(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = build(tmp_path, expectation, lambda c: c.pop("target_bqx45_h15"))
    targets = write(tmp_path / "targets.parquet", {KEY: good_columns(expectation)[KEY]})
    argv = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    argv += ["--no-require-coverage"]
    code = cli.main(
        [*argv, "--targets", str(targets), "--min-rows", "100", "--family-null-share", "corr=0.5"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "[FAIL] target_horizons" in out
    result = json.loads(out.splitlines()[-1])
    assert result["failed"] == ["column_count", "target_horizons"]
    assert result["checks"]["target_horizons"]["metadata"]["missing"] == ["target_bqx45_h15"]


def test_command_needs_the_spine(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = build(tmp_path, expectation)
    assert cli.main(["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]) == 1
    assert "--spine-rows" in capsys.readouterr().err
    bad = ["validate", str(path), "--pair", PAIR, "--spine-rows", "5", "--catalog"]
    assert cli.main([*bad, str(catalog_file), "--family-null-share", "corr"]) == 1
    assert "FAMILY=SHARE" in capsys.readouterr().err


def test_no_target_leakage_accepts_the_series_a_target_leads(
    tmp_path: Path, expectation: Expectation
) -> None:
    # target_bqx{w}_h{h} is bqx_{w} h minutes ahead: same extremes, different rows. Not a leak.
    def change(cols: Columns) -> None:
        series = np.random.default_rng(3).normal(0, 1, ROWS)
        series[[90, 100]] = [5.0, -5.0]  # extremes inside the sampled middle row group
        cols["base_bqx__bqx_45"] = pa.array(series)
        cols["target_bqx45_h15"] = pa.array(np.roll(series, -3))

    leak = run(build(tmp_path, expectation, change), expectation).outcome("no_target_leakage")
    assert leak.passed, leak.metadata
    assert leak.metadata["value_comparisons"] >= 1


def test_nested_columns_raise_naming_the_file(tmp_path: Path, expectation: Expectation) -> None:
    cols = good_columns(expectation)
    cols["agg_bqx__agg_mean_45"] = pa.array([{"a": 1.0, "b": 2.0}] * ROWS)
    path = write(tmp_path / "nested.parquet", cols)
    with pytest.raises(ValidationError, match=r"nested\.parquet.*flat columns"):
        run(path, expectation)


def test_duplicated_key_column_fails_key_integrity(
    tmp_path: Path, expectation: Expectation
) -> None:
    cols = good_columns(expectation)
    table = pa.Table.from_arrays([*cols.values(), cols[KEY]], names=[*cols, KEY])
    pq.write_table(table, tmp_path / "dupkey.parquet")
    report = run(tmp_path / "dupkey.parquet", expectation)
    assert report.outcome("column_count").metadata["duplicates"] == [KEY]
    assert not report.outcome("key_integrity").passed


def test_a_footer_too_large_to_parse_in_bounded_memory_is_refused(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = build(tmp_path, expectation)
    with pytest.raises(ValidationError, match=r"eurusd.*footer.*fewer row groups"):
        run(path, expectation, Thresholds(min_rows=1, max_footer_bytes=1_000))
    argv = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    assert cli.main([*argv, "--spine-rows", str(ROWS), "--max-footer-mb", "0.001"]) == 1
    assert "max_footer_bytes" in capsys.readouterr().err
