"""Hand-made training files for the gate's tests: a tiny catalog, a file that passes, and the
changes that break it the ways the first team's files were broken. They carry no coverage
record (merged.py makes files through the merge, with one)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog, Column, Table, TargetsTable
from bqx_assets.core.gate.report import Expectation, ValidationReport
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.gate.validate import validate_training_file
from bqx_assets.core.layout import KEY

PAIR = "eurusd"
ROWS = 200
ROW_GROUP = 64  # several row groups, so that footer statistics are summed across them
TARGETS = ("target_bqx45_h15", "target_bqx45_h30", "target_bqx90_h15", "target_bqx90_h30")
START_US = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
TH = Thresholds(min_rows=100, max_rows=1_000, require_coverage=False)
"""Hand-made files carry no coverage record: the merge-built files of merged.py do."""

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
    """The good file, changed by `change`."""
    cols = good_columns(exp)
    if change:
        change(cols)
    return write(tmp_path / "training_eurusd.parquet", cols)


def run(path: Path, exp: Expectation, th: Thresholds = TH) -> ValidationReport:
    return validate_training_file(path, exp, th)


OTHER = Thresholds(
    min_rows=10,
    max_rows=20,
    target_null_share=0.2,
    feature_null_share=0.3,
    family_null_share={"x": 0.4, "y": 0.5},
    null_share_tolerance=0.06,
    family_null_tolerance={"x": 0.07},
    require_coverage=False,
    min_coverage=0.8,
    family_min_coverage={"y": 0.9},
    tail_tolerance_rows=3,
    newest_null_tolerance=0.11,
    drift_family_null_share=0.012,
    drift_column_null_share=0.013,
    drift_relative=0.5,
    drift_range_factor=3.0,
    leak_allow=("a__target_1", "b__target_2"),
    key_start=datetime(2024, 1, 1, tzinfo=UTC),
    key_end=datetime(2024, 2, 1, 12, tzinfo=UTC),
    value_leak=False,
    max_footer_bytes=3 * 2**20,
    max_names=5,
)
"""Every field away from its default."""
