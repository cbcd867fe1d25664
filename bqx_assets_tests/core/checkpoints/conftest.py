"""Checkpoint tests' warehouse (the mini catalog, Monday 29 to Wednesday 31 January 2024, made
once per session), a warehouse that records its reads, and helpers that merge a pair's chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import ChunkedCheckpoint
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.window import ALL_TIME, Window
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import merge_checkpoints, pair_inputs
from bqx_assets.core.storage import LocalStorage, Storage
from bqx_assets.core.warehouse import Cut, DateRange, PartitionStates, TableRead
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses

PAIR = "eurusd"
START = datetime(2024, 1, 29, tzinfo=UTC)
"""A Monday: three days of January, then February as days are appended."""
DAY = 1440
"""Minutes (rows) in a day."""


def utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class CountingWarehouse(EmbeddedWarehouse):
    """The embedded warehouse, recording each read: (table, window, bytes, rows), and each
    partition look-up: (dataset, tables asked, cut)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        super().__init__(path, read_only=read_only)
        self.reads: list[tuple[str, DateRange, int, int]] = []
        self.lookups: list[tuple[str, int, Cut | None]] = []

    def partition_states(
        self, dataset: str, tables: Sequence[str], *, cut: Cut | None = None
    ) -> PartitionStates:
        self.lookups.append((dataset, len(tables), cut))
        return super().partition_states(dataset, tables, cut=cut)

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
        self.reads.append((table, window, done.bytes_read, done.data.num_rows))
        return done


@pytest.fixture(scope="session")
def three_days(warehouses: Warehouses, mini: tuple[Catalog, Path]) -> Path:
    """The shared read-only warehouse of both mini pairs (the shared tables and a rolling
    window count every pair's days), Monday 29 to Wednesday 31 January 2024."""
    return warehouses.path(mini[0], pairs=MINI_PAIRS, rows=3 * DAY, start=START)


@pytest.fixture
def warehouse(
    warehouses: Warehouses, mini: tuple[Catalog, Path], tmp_path: Path
) -> Iterator[CountingWarehouse]:
    """A private, writable copy of `three_days`, recording its reads."""
    path = warehouses.copy(
        tmp_path / "w.duckdb", mini[0], pairs=MINI_PAIRS, rows=3 * DAY, start=START
    )
    wh = CountingWarehouse(path)
    yield wh
    wh.close()


def pair_sources(catalog: Catalog, pair: str = PAIR) -> list[Source]:
    """A pair's step's tables: its targets table, then its feature tables."""
    return [catalog.targets[pair], *catalog.tables_for(pair)]


def counts(done: Sequence[ChunkedCheckpoint]) -> dict[str, int]:
    return {
        status: sum(c.count(status) for c in done)  # type: ignore[arg-type]
        for status in ("extracted", "reused", "compacted")
    }


def merged(storage: Storage, catalog: Catalog, folder: Path, window: Window = ALL_TIME) -> pa.Table:
    """The pair's training file merged from its chunks in `storage` inside `window`, as a
    table (written to, and published in, the local root `folder`)."""
    out = LocalStorage(folder)
    inputs = pair_inputs(storage, catalog, PAIR, window)
    report = merge_checkpoints(inputs.spine, inputs.tables, out.stage("training.parquet"))
    out.publish_staged(report.staged, "training.parquet")
    return pq.read_table(folder / "training.parquet")


def assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name


def days_of(table: pa.Table) -> set[date]:
    return {k.date() for k in table.column(KEY).to_pylist()}


def stamps(storage: LocalStorage) -> dict[str, tuple[int, int]]:
    """Every stored file's size and modification time (ns): what a write would change."""
    out = {}
    for key in storage.list():
        st = (storage.root / key).stat()
        out[key] = (st.st_size, st.st_mtime_ns)
    return out
