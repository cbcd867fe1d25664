"""What the gate expects of a pair's file (from the catalog) and how it reports a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.report import Expectation, FamilyNulls, Listing
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import KEY
from bqx_assets_tests.core.gate.handmade import (
    PAIR,
    ROWS,
    START_US,
    TARGETS,
    Columns,
    build,
    run,
    tiny_catalog,
    write,
)


def test_expectation_for_pair_leaves_out_leak_columns() -> None:
    exp = Expectation.for_pair(tiny_catalog(), PAIR, ROWS)
    assert exp.columns[: 1 + len(TARGETS)] == (KEY, *TARGETS)
    assert "base_bqx__target_45" not in exp.columns
    assert exp.family_of["corr_etf_idx_spy__corr_45"] == "corr"
    assert exp.table_family == {
        "agg_bqx_eurusd": "agg",
        "base_bqx_eurusd": "base",
        "corr_etf_idx_eurusd_spy": "corr",
    }
    assert exp.features([KEY, TARGETS[0], "a", "b"]) == [2, 3]


def test_expectation_of_the_production_catalog(tmp_path: Path, catalog: Catalog) -> None:
    exp = Expectation.for_pair(catalog, PAIR, 3)
    assert len(exp.columns) == 17_031 and len(exp.targets) == 49
    assert len(exp.family_of) == 17_031 - 50
    assert sum(f == "tri" for f in exp.family_of.values()) == 6_460
    # A file with the key and targets only: every catalog feature is reported missing, by count.
    keys = pa.array(START_US + np.arange(3) * 60_000_000, pa.timestamp("us", tz="UTC"))
    cols: Columns = {KEY: keys, **{t: pa.array([0.1, 0.2, 0.3]) for t in exp.targets}}
    report = run(write(tmp_path / "t.parquet", cols), exp, Thresholds(min_rows=1))
    column = report.outcome("column_count")
    assert not column.passed
    # Counts are full; the listing names the first max_names (20) of them.
    assert column.metadata["missing_count"] == 16_981
    listing = column.metadata["columns"]
    assert isinstance(listing, Listing) and len(listing.rows) == 20
    assert listing.total == 16_981 and "20 of 16,981 shown" in listing.markdown()
    assert report.outcome("target_horizons").passed


def test_a_report_lists_each_check_and_why_it_failed(
    tmp_path: Path, expectation: Expectation
) -> None:
    report = run(build(tmp_path, expectation, lambda c: c.pop("target_bqx45_h15")), expectation)
    assert report.failed == ("column_count", "target_horizons") and not report.passed
    lines = report.summary().splitlines()
    assert "FAILED (column_count, target_horizons)" in lines[0]
    assert f"{ROWS:,} rows" in lines[0] and "in 4 row groups" in lines[0]
    assert lines[1].startswith("  [pass] row_count: ")
    assert any(line.startswith("  [FAIL] target_horizons: 3 of 4 targets") for line in lines)
    as_dict = report.to_dict()
    assert as_dict["failed"] == ["column_count", "target_horizons"]
    target = as_dict["checks"]["target_horizons"]["metadata"]
    assert target["missing"] == ["target_bqx45_h15"]
    assert target["targets"] == [{"target": "target_bqx45_h15", "problem": "missing"}]


def test_a_family_passes_under_its_threshold_with_no_dead_column() -> None:
    assert FamilyNulls("agg", 2, 0.07, 0, 0.074).passed
    assert not FamilyNulls("agg", 2, 0.08, 0, 0.074).passed
    assert not FamilyNulls("agg", 2, 0.01, 1, 0.074).passed


def test_a_listing_is_a_markdown_table_that_says_what_it_left_out() -> None:
    listing = Listing.of(
        ("table", "rows", "why"),
        [("a", 1_200, "stops | early"), ("b", 3, "x"), ("c", 4, "y")],
        limit=2,
    )
    assert listing.markdown().splitlines() == [
        "| table | rows | why |",
        "|---|---:|---|",
        "| a | 1,200 | stops \\| early |",
        "| b | 3 | x |",
        "",
        "2 of 3 shown",
    ]
    assert listing.to_json() == [
        {"table": "a", "rows": 1_200, "why": "stops | early"},
        {"table": "b", "rows": 3, "why": "x"},
    ]
