"""The mini warehouse loaded into the BigQuery emulator once per session, shared read-only by the
BigQuery tests (the warehouse's methods, and the refresh that production runs on it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.layout import KEY, KEY_TYPE
from bqx_assets.core.merge.inputs import pair_inputs
from bqx_assets.core.merge.join import merge_checkpoints
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange, TableRead
from bqx_assets.core.warehouse.base import Cut
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse, RetrySettings
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses

if TYPE_CHECKING:
    from bqx_assets.core.checkpoints.schema import Source
    from bqx_assets.core.checkpoints.window import Window
    from emulators.bigquery import BigQueryEmulator

PAIR = "eurusd"
START = datetime(2024, 1, 26, 18, 0, tzinfo=UTC)
"""A Friday, four hours before the FX week closes (22:00): then Sunday from 22:00, and Monday
to Wednesday whole: five day partitions, the last ones of January."""
ROWS = 240 + 120 + 3 * 1440
SUMMARY_TABLE = "mkt_reg_summary"
"""A table without `interval_time`, beside the features (not a feature table)."""


class RecordingWarehouse(BigQueryWarehouse):
    """The BigQuery warehouse, recording each read: (table, window, rows)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[str, DateRange, int]] = []

    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        done = super().read(dataset, table, columns, window, cut=cut)
        self.reads.append((table, window, done.data.num_rows))
        return done


def open_warehouse(
    emulator: BigQueryEmulator,
    features: str,
    targets: str,
    cls: type[BigQueryWarehouse] = BigQueryWarehouse,
    **kwargs: Any,
) -> BigQueryWarehouse:
    """A warehouse of class `cls` on the emulator as production opens it (no location
    configured: each dataset's own), with quick retries, and an extract job's files read back
    from the emulator's folder."""
    kwargs.setdefault("location", None)
    kwargs.setdefault("api_endpoint", emulator.rest_endpoint)
    kwargs.setdefault("read_endpoint", emulator.grpc_endpoint)
    kwargs.setdefault("retry", RetrySettings(attempts=8, initial_s=0.1, maximum_s=1.0))
    kwargs.setdefault("gcs_local_root", str(emulator.data_dir / "gcs"))
    return cls(emulator.project, features, targets, **kwargs)


def relocated(catalog: Catalog, features: str, targets: str) -> Catalog:
    """The catalog with its tables in other datasets (the emulator's)."""
    return Catalog(
        catalog.project, features, targets, catalog.pairs,
        {n: dataclasses.replace(t, dataset=features) for n, t in catalog.tables.items()},
        {p: dataclasses.replace(t, dataset=targets) for p, t in catalog.targets.items()},
        catalog.excluded,
    )  # fmt: skip


def pair_sources(catalog: Catalog, pair: str = PAIR) -> list[Source]:
    """The tables of a pair's checkpoint steps: its targets table (the spine) and its features."""
    return [catalog.targets[pair], *catalog.tables_for(pair)]


def window_rows(data: pa.Table, columns: Sequence[str], window: DateRange) -> pa.Table:
    """`columns` of the rows in `window` (either side open), sorted by the key."""
    keys = data[KEY]
    mask = pa.array(np.ones(len(data), dtype=bool))
    if window.start is not None:
        mask = pc.and_(mask, pc.greater_equal(keys, pa.scalar(window.start, KEY_TYPE)))
    if window.end is not None:
        mask = pc.and_(mask, pc.less(keys, pa.scalar(window.end, KEY_TYPE)))
    return data.filter(mask).sort_by(KEY).select(list(columns))


def merged_file(storage: LocalStorage, catalog: Catalog, window: Window, out: Path) -> pa.Table:
    """The pair's training file merged from the chunks in `storage`, as the training_file asset
    merges it (into a sink of the output folder, then published)."""
    inputs = pair_inputs(storage, catalog, PAIR, window)
    folder = LocalStorage(out.parent)
    report = merge_checkpoints(inputs.spine, inputs.tables, folder.stage(out.name))
    folder.publish_staged(report.staged, out.name)
    return pq.read_table(out)


def assert_same_file(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name


@dataclass
class BigQueryMini:
    """The mini warehouse's eurusd tables (both pairs' targets, and a summary table) loaded
    into two datasets of the emulator, as production has them: features and targets."""

    emulator: BigQueryEmulator
    features: str
    targets: str
    catalog: Catalog
    """The mini catalog, its tables in the emulator's datasets."""
    embedded: Path
    """The embedded warehouse the rows come from (read-only, shared)."""
    rows: dict[str, pa.Table]
    """Table name -> the rows loaded, in key order (they were loaded shuffled)."""

    def warehouse(
        self, cls: type[BigQueryWarehouse] = BigQueryWarehouse, **kwargs: Any
    ) -> BigQueryWarehouse:
        return open_warehouse(self.emulator, self.features, self.targets, cls, **kwargs)

    def sources(self, pair: str = PAIR) -> list[Source]:
        return pair_sources(self.catalog, pair)

    def expected(self, name: str, columns: Sequence[str], window: DateRange) -> pa.Table:
        return window_rows(self.rows[name], columns, window)


@pytest.fixture(scope="session")
def bq_mini(
    bigquery_emulator: BigQueryEmulator, warehouses: Warehouses, mini: tuple[Catalog, Path]
) -> BigQueryMini:
    from emulators.bigquery import load_tables

    catalog, _ = mini
    path = warehouses.path(catalog, pairs=MINI_PAIRS, rows=ROWS, start=START)
    embedded = EmbeddedWarehouse(path)
    try:
        names = [(s.dataset, s.name) for s in [*pair_sources(catalog), catalog.targets["gbpusd"]]]
        rows = {
            name: embedded._cursor()
            .execute(f'SELECT * FROM "{dataset}"."{name}" ORDER BY {KEY}')
            .to_arrow_table()
            for dataset, name in names
        }
    finally:
        embedded.close()
    rng = np.random.default_rng(0)
    # Loaded in shuffled order: Storage Read does not order rows, so the reader must sort.
    shuffled = {n: t.take(pa.array(rng.permutation(t.num_rows))) for n, t in rows.items()}
    emulator = bigquery_emulator
    features, targets = emulator.dataset("features"), emulator.dataset("targets")
    summary = pa.table({"regime": ["calm", "trend"], "minutes": pa.array([10, 20], pa.int64())})
    client = emulator.client()
    load_tables(
        client,
        features,
        {n: t for n, t in shuffled.items() if n in catalog.tables} | {SUMMARY_TABLE: summary},
    )
    load_tables(client, targets, {n: t for n, t in shuffled.items() if n not in catalog.tables})
    return BigQueryMini(
        emulator, features, targets, relocated(catalog, features, targets), path, rows
    )


@pytest.fixture
def bq_warehouse(bq_mini: BigQueryMini) -> Iterator[BigQueryWarehouse]:
    wh = bq_mini.warehouse()
    yield wh
    wh.close()
