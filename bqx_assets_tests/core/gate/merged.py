"""Training files made by the merge for the gate's tests (with its coverage record): production's
structural nulls in miniature over two days, and the faults the first team met in its tables."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog, Column, Table, TargetsTable
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import Expectation, ValidationReport
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.gate.validate import validate_training_file
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import InputTable, merge_checkpoints
from bqx_assets.core.storage import LocalStorage

PAIR = "eurusd"
MINUTE = 60_000_000
START_US = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
ROWS = 2 * 1440  # two UTC days: the newest day is the second, 1,440 rows
SPINE = START_US + np.arange(ROWS, dtype=np.int64) * MINUTE
TARGET = "target_bqx45_h15"
TH = Thresholds(min_rows=1)
# table -> (family, columns); the stem of each output name drops `_eurusd`.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "agg_bqx_eurusd": ("agg", ("agg_mean_45", "agg_std_45")),
    "corr_etf_idx_eurusd_spy": ("corr", ("corr_45",)),
    "tri_agg_bqx_eur_usd_gbp": ("tri", ("tri_mean_45",)),
}

Data = dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]
"""table -> (keys in microseconds, column -> float values with NaN for null)."""


def output_name(table: str, column: str) -> str:
    return f"{table.replace('_' + PAIR, '')}__{column}"


EXPECTATION = Expectation(
    pair=PAIR,
    spine_rows=ROWS,
    columns=(KEY, TARGET, *(output_name(t, c) for t, (_, cs) in TABLES.items() for c in cs)),
    targets=(TARGET,),
    family_of={output_name(t, c): f for t, (f, cs) in TABLES.items() for c in cs},
    table_family={t: f for t, (f, _) in TABLES.items()},
)


def clean_data(spine: np.ndarray = SPINE) -> Data:
    """Production's structural nulls in miniature: agg warms up for 45 minutes, corr has rows
    only while its ETF quotes (08:00-20:00 UTC), tri starts a fifth of the way in (`spine`: the
    ROWS keys, by default two UTC days)."""
    rng = np.random.default_rng(3)
    minute_of_day = (spine // MINUTE) % 1440
    agg_mean = rng.normal(0, 1, ROWS)
    agg_mean[:45] = np.nan
    agg_std = np.abs(rng.normal(0, 1, ROWS))
    agg_std[:45] = np.nan
    etf = (minute_of_day >= 8 * 60) & (minute_of_day < 20 * 60)
    late = ROWS // 5
    return {
        "agg_bqx_eurusd": (spine, {"agg_mean_45": agg_mean, "agg_std_45": agg_std}),
        "corr_etf_idx_eurusd_spy": (spine[etf], {"corr_45": rng.uniform(-1, 1, int(etf.sum()))}),
        "tri_agg_bqx_eur_usd_gbp": (spine[late:], {"tri_mean_45": rng.normal(0, 1, ROWS - late)}),
    }


def write_checkpoint(path: Path, keys: np.ndarray, columns: dict[str, np.ndarray]) -> Path:
    arrays = [pa.array(keys, pa.timestamp("us", tz="UTC"))]
    arrays += [pa.array(v, pa.float64(), mask=np.isnan(v)) for v in columns.values()]
    pq.write_table(pa.table(arrays, names=[KEY, *columns]), path, row_group_size=1000)
    return path


def merged(
    tmp_path: Path, data: Data, name: str = "training_eurusd.parquet", spine: np.ndarray = SPINE
) -> Path:
    """The training file the merge writes from `data` (with its coverage record) on `spine`
    (ROWS keys), published as `tmp_path / name`."""
    folder = tmp_path / name.replace(".parquet", "")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    targets = rng.normal(0, 0.087, ROWS)
    targets[-15:] = np.nan
    spine = InputTable.of_files(
        "targets_eurusd",
        write_checkpoint(folder / "targets.parquet", spine, {TARGET: targets}),
        columns=((TARGET, TARGET),),
    )
    tables = [
        InputTable.of_files(
            table,
            write_checkpoint(folder / f"{table}.parquet", *data[table]),
            columns=tuple((c, output_name(table, c)) for c in TABLES[table][1]),
        )
        for table in TABLES
    ]
    storage = LocalStorage(tmp_path)
    report = merge_checkpoints(spine, tables, storage.stage(name))
    storage.publish_staged(report.staged, name)
    return tmp_path / name


def validate(path: Path, history: Profile | None = None, th: Thresholds = TH) -> ValidationReport:
    return validate_training_file(path, EXPECTATION, th, history)


def build(tmp_path: Path, change: Callable[[Data], None] | None = None) -> ValidationReport:
    """The report of the clean data's merged file, changed by `change`."""
    data = clean_data()
    if change:
        change(data)
    return validate(merged(tmp_path, data))


def catalog() -> Catalog:
    """The catalog of these tables and the target."""
    tables = [
        Table(name, "features", family, "pair", (PAIR,), tuple(Column(c, "FLOAT64") for c in cs))
        for name, (family, cs) in TABLES.items()
    ]
    targets = TargetsTable("targets_eurusd", "analytics", PAIR, (Column(TARGET, "FLOAT64"),))
    return Catalog(
        "bqx-ml", "features", "analytics", (PAIR,), {t.name: t for t in tables}, {PAIR: targets}
    )
