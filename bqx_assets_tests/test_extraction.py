"""Extraction: sorted verified checkpoints, resume, staleness, and failures that lose nothing."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core import memory
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.chunks import refresh_tables
from bqx_assets.core.checkpoints.extraction import (
    Manifest,
    conform,
    expected_schema,
    extract_table,
    extract_tables,
    missing_checkpoints,
    require_checkpoints,
    rows_per_read,
)
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.layout import checkpoint_key, manifest_key
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange, TableRead
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse


@pytest.fixture
def warehouse(tmp_path: Path, mini_warehouse: Path) -> EmbeddedWarehouse:
    """A private writable copy of the mini warehouse."""
    path = tmp_path / "w.duckdb"
    shutil.copy(mini_warehouse, path)
    return EmbeddedWarehouse(path, read_only=False)


def _sources(catalog: Catalog, pair: str = "eurusd") -> list:
    return [*catalog.tables_for(pair), catalog.targets[pair]]


def test_checkpoints_match_the_source_rows(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    done = extract_tables(warehouse, _sources(catalog), storage, threads=2, row_group_rows=128)
    assert [c.status for c in done] == ["extracted"] * len(done)
    table = catalog.table("corr_etf_idx_eurusd_spy")
    path = storage.local_path(checkpoint_key("eurusd", table.name))
    data = pq.read_table(path)
    source = warehouse.read(table.dataset, table.name, expected_schema(table).names, DateRange())
    assert data.equals(source.data.cast(data.schema))  # same rows; the key is declared non-null
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-data.num_rows // 128)
    manifest = Manifest.from_json(storage.read_bytes(manifest_key("eurusd", table.name)))
    assert manifest.rows == data.num_rows == 120  # the ETF quotes 08:00-20:00 UTC: 2 of 10 hours
    assert manifest.crc32c == storage.stat(checkpoint_key("eurusd", table.name)).crc32c
    assert manifest.bytes_read == source.bytes_read > 0
    # Shared and cov tables live under shared/, once for every pair.
    assert storage.stat("shared/cov_agg_eurusd_gbpusd.parquet") is not None
    assert storage.stat("shared/tri_agg_bqx_eur_usd_gbp.parquet") is not None
    require_checkpoints(storage, _sources(catalog), "eurusd")


def test_resume_reuses_current_checkpoints_and_redoes_bad_ones(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    extract_tables(warehouse, _sources(catalog), storage, threads=2)
    paths = {
        s.name: storage.local_path(checkpoint_key(s.owner, s.name))
        for s in catalog.tables_for("eurusd")
    }
    mtimes = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    # A truncated file, a deleted manifest: both redone; everything else reused untouched.
    truncated = paths["agg_eurusd"]
    truncated.write_bytes(truncated.read_bytes()[:100])
    storage.delete(manifest_key("eurusd", "tmp_eurusd"))
    fresh = LocalStorage(tmp_path / "ckpt")  # a new process: no cached checksums
    again = {
        c.source.name: c.status
        for c in extract_tables(warehouse, _sources(catalog), fresh, threads=2)
    }
    assert {n for n, s in again.items() if s == "extracted"} == {"agg_eurusd", "tmp_eurusd"}
    for name, path in paths.items():
        if name not in ("agg_eurusd", "tmp_eurusd"):
            assert path.stat().st_mtime_ns == mtimes[name], name
    assert pq.read_table(truncated).num_rows == 600


def test_a_changed_source_makes_exactly_its_checkpoint_stale(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    extract_tables(warehouse, _sources(catalog), storage, threads=2)
    warehouse.append_minutes(catalog.features_dataset, "lag_eurusd_45", 7)
    again = extract_tables(warehouse, _sources(catalog), storage, threads=2)
    assert [c.source.name for c in again if c.status == "extracted"] == ["lag_eurusd_45"]
    assert pq.read_metadata(storage.local_path("eurusd/lag_eurusd_45.parquet")).num_rows == 607


def test_duplicate_keys_fail_that_table_and_keep_the_others(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    ds = catalog.features_dataset
    cursor = warehouse._cursor()
    cursor.execute(
        f'INSERT INTO "{ds}"."mkt_sentiment" SELECT * FROM "{ds}"."mkt_sentiment" LIMIT 3'
    )
    cursor.execute(f'DROP TABLE "{ds}"."regime_eurusd_45"')
    storage = LocalStorage(tmp_path / "ckpt")
    with pytest.raises(ExtractionError) as err:
        extract_tables(warehouse, _sources(catalog), storage, threads=2)
    text = str(err.value)
    assert "2 of 15 tables failed, the other checkpoints are kept" in text
    assert (
        "mkt_sentiment has duplicate interval_time values" in text
        and "2024-01-01T00:00:00+00:00" in text
    )
    assert "regime_eurusd_45" in text
    assert missing_checkpoints(storage, _sources(catalog)) == ["regime_eurusd_45", "mkt_sentiment"]
    with pytest.raises(
        ExtractionError,
        match="2 of 15 tables have no verified checkpoint: regime_eurusd_45, mkt_sentiment",
    ):
        require_checkpoints(storage, _sources(catalog), "pair eurusd")


def test_no_tables_is_never_success(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="lists no tables"):
        require_checkpoints(LocalStorage(tmp_path), [], "pair eurusd")


def test_keys_in_other_units_and_zones_are_normalised(catalog: Catalog) -> None:
    table = catalog.targets["eurusd"]
    when = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    cols = {c.name: [0.1, 0.2] for c in table.columns}
    ns = pa.array([1709294400000000000, 1709294460000000000], pa.timestamp("ns"))
    data = conform(pa.table({"interval_time": ns, **cols}), table)
    assert data.schema.field("interval_time").type == pa.timestamp("us", tz="UTC")
    assert data.column("interval_time")[0].as_py() == when  # not a 1970 date
    ny = pa.array([1709294400000, 1709294460000], pa.timestamp("ms", tz="America/New_York"))
    assert conform(pa.table({"interval_time": ny, **cols}), table).column(0)[0].as_py() == when


def test_mistyped_or_missing_columns_name_the_table(catalog: Catalog) -> None:
    table = catalog.table("div_bqx_eurusd")
    keys = pa.array([1, 2], pa.timestamp("us", tz="UTC"))
    cols = {c.name: [1.0, 2.0] for c in table.columns}
    with pytest.raises(
        ExtractionError, match=r"div_bqx_eurusd\.div_short_leading is double, the catalog says bool"
    ):
        conform(pa.table({"interval_time": keys, **cols}), table)
    with pytest.raises(ExtractionError, match="div_bqx_eurusd has no interval_time column"):
        conform(pa.table(cols), table)
    del cols["div_short_leading"]
    with pytest.raises(ExtractionError, match=r"lacks catalog columns \['div_short_leading'\]"):
        conform(pa.table({"interval_time": keys, **cols}), table)


def test_single_table_reuse_reports_status(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    table = catalog.table("csi_agg_eur")
    assert extract_table(warehouse, table, storage).status == "extracted"
    assert extract_table(warehouse, table, storage).status == "reused"
    window = DateRange(datetime(2024, 1, 1, 1, tzinfo=UTC), None)
    redone = extract_table(warehouse, table, storage, window=window)  # another window: redone
    assert redone.status == "extracted" and redone.manifest.rows == 610 - 60


class _RecordingWarehouse(EmbeddedWarehouse):
    """The embedded warehouse, recording each read's window and rows."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads: list[tuple[DateRange, int]] = []

    def read(
        self, dataset: str, table: str, columns: Sequence[str], window: DateRange
    ) -> TableRead:
        done = super().read(dataset, table, columns, window)
        self.reads.append((window, done.data.num_rows))
        return done


def test_a_wide_run_of_chunks_is_read_in_bounded_reads_into_the_same_chunks(
    tmp_path: Path, mini: tuple[Catalog, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, _ = mini
    path = tmp_path / "w.duckdb"
    # From Monday 29 January 2024: January's three days (one month chunk), then 1 and 2 February
    # (a chunk per day of the newest month), 600 minutes on the 2nd.
    start = datetime(2024, 1, 29, tzinfo=UTC)
    create_warehouse(path, catalog, pairs=["eurusd"], rows=4 * 1440 + 600, start=start).close()
    table = catalog.table("agg_eurusd")
    whole, split = LocalStorage(tmp_path / "whole"), LocalStorage(tmp_path / "split")
    warehouse = _RecordingWarehouse(path)
    (one,) = refresh_tables(warehouse, [table], whole, threads=1)
    assert [rows for _, rows in warehouse.reads] == [4 * 1440 + 600]  # one read of the table

    warehouse.reads.clear()
    # Reads of at most a day: the month chunk is a read of its own, then one read per day.
    monkeypatch.setattr(extraction, "READ_BYTES", 1440 * 8 * (1 + len(table.columns)))
    assert rows_per_read(table) == 1440
    (again,) = refresh_tables(warehouse, [table], split, threads=1)
    assert [rows for _, rows in warehouse.reads] == [3 * 1440, 1440, 600]
    assert [w.start for w, _ in warehouse.reads] == [
        datetime(2024, 1, 1, tzinfo=UTC),  # the month's calendar bounds
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 2, 2, tzinfo=UTC),
    ]
    assert [c.manifest.rows for c in again.chunks] == [3 * 1440, 1440, 600]
    assert again.bytes_read == one.bytes_read
    for a, b in zip(one.chunks, again.chunks, strict=True):
        key = a.key("eurusd")
        assert b.key("eurusd") == key
        assert pq.read_table(split.local_path(key)).equals(pq.read_table(whole.local_path(key)))


def test_free_memory_is_handed_back_only_once_rss_has_grown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rss = iter([100, 100, 150, 120, 170, 100, 90, 95, 140, 200, 100]).__next__
    trims: list[int] = []
    monkeypatch.setattr(memory, "_rss_bytes", rss)
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1))
    memory_return = memory.MemoryReturn(growth=50)  # lowest RSS seen: 100
    for _ in range(4):
        memory_return.after_table()  # 100, 150 (+50: trim, then 120), 170 (+50: trim, then 100), 90
    assert memory_return.trims == 2
    memory_return.after_table()  # 95: lowest 90
    memory_return.after_table()  # 140 (+50 over the lowest since the last trim: trim, then 200)
    assert memory_return.trims == 3
    memory_return.after_table()  # 100: lower than the 200 read after the trim
    assert len(trims) == 3


def test_free_memory_is_handed_back_after_every_table_without_an_rss_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "_rss_bytes", lambda: None)
    trims: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1))
    memory_return = memory.MemoryReturn()
    for _ in range(3):
        memory_return.after_table()
    assert len(trims) == 3
