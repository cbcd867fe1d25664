"""The refresh: a table's chunks brought up to date with its day partitions, reading only the
chunks whose days changed or are new; what it writes equals a from-scratch build, and what
fails is named while everything already written is kept."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints import schema
from bqx_assets.core.checkpoints.manifest import ChunkManifest, stored_manifests
from bqx_assets.core.checkpoints.refresh import (
    ChunkedCheckpoint,
    RefreshProgress,
    refresh_checkpoints,
    refresh_table,
    refresh_tables,
)
from bqx_assets.core.checkpoints.schema import expected_schema, rows_per_read
from bqx_assets.core.checkpoints.select import require_chunks
from bqx_assets.core.checkpoints.window import ALL_TIME, TrainingWindow
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import pair_inputs
from bqx_assets.core.storage import LocalStorage, open_storage
from bqx_assets.core.storage.gcs import GCSStorage
from bqx_assets.core.warehouse import Cut, DateRange, TableRead
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, connect
from bqx_assets_tests.builders import correct_day
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses, gcs_as_google_answers
from bqx_assets_tests.core.checkpoints.conftest import (
    DAY,
    PAIR,
    CountingWarehouse,
    assert_same,
    counts,
    merged,
    pair_sources,
    stamps,
    utc,
)

if TYPE_CHECKING:
    from emulators.gcs import GCSEmulator
    from emulators.proxy import Exchange, Reply


def _chunk_files(storage: LocalStorage) -> set[str]:
    return {k for k in storage.list() if k.endswith(".parquet")}


def _manifest(storage: LocalStorage, key: str) -> ChunkManifest:
    raw = storage.read_bytes(key.removesuffix(".parquet") + ".manifest.json")
    manifest = ChunkManifest.from_json(raw or b"")
    assert manifest is not None, key
    return manifest


@pytest.fixture
def mini_copy(
    warehouses: Warehouses, mini: tuple[Catalog, Path], tmp_path: Path
) -> Iterator[CountingWarehouse]:
    """A private, writable copy of the session's mini warehouse (600 minutes from 1 January)."""
    path = warehouses.copy(tmp_path / "mini.duckdb", mini[0], pairs=MINI_PAIRS, rows=600)
    wh = CountingWarehouse(path)
    yield wh
    wh.close()


# -- what a refresh writes --------------------------------------------------------------------
def test_chunks_hold_the_source_rows_with_their_manifest(
    mini: tuple[Catalog, Path], mini_warehouse: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    sources = pair_sources(catalog)
    wh = CountingWarehouse(mini_warehouse, read_only=True)
    try:
        done = refresh_tables(wh, sources, storage, threads=2, row_group_rows=128)
        assert [c.status for c in done] == ["extracted"] * len(sources)
        assert [c.source for c in done] == sources  # in the order asked
        table = catalog.table(f"corr_etf_idx_{PAIR}_spy")
        source = wh.read(table.dataset, table.name, expected_schema(table).names, ALL_TIME)
    finally:
        wh.close()
    corr = next(c for c in done if c.source == table)
    (chunk,) = corr.chunks  # 600 minutes of one day: one day chunk
    key = chunk.key(PAIR)
    assert key == f"{PAIR}/{table.name}/2024-01-01_2024-01-01.parquet"
    data = pq.read_table(storage.local_path(key))
    assert data.equals(source.data.cast(data.schema))  # same rows; the key is declared non-null
    assert pq.ParquetFile(storage.local_path(key)).metadata.num_row_groups == -(
        -data.num_rows // 128
    )
    manifest = _manifest(storage, key)
    assert manifest == chunk.manifest
    assert manifest.rows == data.num_rows == 120  # the ETF quotes 08:00-20:00 UTC: 2 of 10 hours
    info = storage.stat(key)
    assert (manifest.bytes, manifest.crc32c) == (info.size, info.crc32c)
    assert manifest.bytes_read == source.bytes_read == corr.bytes_read > 0
    assert manifest.method == "read"
    assert manifest.key_min == "2024-01-01T08:00:00+00:00"
    # Shared and cov tables live under shared/, once for every pair.
    assert storage.stat("shared/cov_agg_eurusd_gbpusd/2024-01-01_2024-01-01.parquet")
    assert any(k.startswith("shared/tri_agg_bqx_eur_usd_gbp/") for k in _chunk_files(storage))
    # The targets' chunk has no `pair` column; every table has a verified chunk.
    spine = next(c for c in done if c.source == catalog.targets[PAIR])
    assert "pair" not in pq.read_schema(storage.local_path(spine.chunks[0].key(PAIR))).names
    chosen = require_chunks(storage, sources, ALL_TIME, f"pair {PAIR}")
    assert set(chosen) == {s.name for s in sources}


def test_a_table_is_extracted_then_reused_and_redone_for_another_window(
    mini: tuple[Catalog, Path], mini_warehouse: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    table = catalog.table("csi_agg_eur")
    wh = CountingWarehouse(mini_warehouse, read_only=True)
    try:
        (states,) = wh.partition_states(table.dataset, [table.name]).values()
        first = refresh_table(wh, table, storage, states)
        assert first.status == "extracted" and first.rows == 610  # shared tables run 10 longer
        files = stamps(storage)
        again = refresh_table(wh, table, storage, states)
        assert again.status == "reused" and again.bytes_read == 0 and len(wh.reads) == 1
        assert stamps(storage) == files  # nothing rewritten, not even the index
        window = DateRange(datetime(2024, 1, 1, 1, tzinfo=UTC), None)
        redone = refresh_table(wh, table, storage, states, window=window)
    finally:
        wh.close()
    assert redone.status == "extracted" and redone.rows == 610 - 60
    assert redone.chunks[0].manifest.window[0] == "2024-01-01T01:00:00+00:00"
    # The chunk for the whole day was replaced by the window's.
    assert len(_chunk_files(storage)) == 1


def test_a_changed_source_makes_exactly_its_chunks_stale(
    mini: tuple[Catalog, Path], mini_copy: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    sources = pair_sources(catalog)
    refresh_tables(mini_copy, sources, storage, threads=2)
    before = stamps(storage)
    mini_copy.append_minutes(catalog.features_dataset, f"lag_{PAIR}_45", 7)
    mini_copy.reads.clear()
    again = refresh_tables(mini_copy, sources, storage, threads=2)
    assert [c.source.name for c in again if c.status == "extracted"] == [f"lag_{PAIR}_45"]
    assert [t for t, *_ in mini_copy.reads] == [f"lag_{PAIR}_45"]
    key = f"{PAIR}/lag_{PAIR}_45/2024-01-01_2024-01-01.parquet"
    assert pq.read_metadata(storage.local_path(key)).num_rows == 607
    after = stamps(storage)
    assert {k for k in before if after.get(k) != before[k]} == {
        key,
        key.replace(".parquet", ".manifest.json"),
        f"{PAIR}/lag_{PAIR}_45/chunks.index.json",
    }


def test_a_damaged_or_unrecorded_chunk_is_not_reused(
    mini: tuple[Catalog, Path], mini_warehouse: Path, tmp_path: Path
) -> None:
    """A truncated chunk, one changed in place at the same size, and one whose manifest was
    deleted are read again; every other chunk is reused untouched."""
    catalog, _ = mini
    root = tmp_path / "ckpt"
    sources = pair_sources(catalog)
    wh = CountingWarehouse(mini_warehouse, read_only=True)
    try:
        refresh_tables(wh, sources, LocalStorage(root), threads=2)
        key = {n: f"{PAIR}/{n}/2024-01-01_2024-01-01.parquet" for n in
               (f"agg_{PAIR}", f"tmp_{PAIR}", f"div_bqx_{PAIR}")}  # fmt: skip
        truncated = root / key[f"agg_{PAIR}"]
        truncated.write_bytes(truncated.read_bytes()[:100])
        flipped = root / key[f"div_bqx_{PAIR}"]
        raw = bytearray(flipped.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        flipped.write_bytes(bytes(raw))
        (root / key[f"tmp_{PAIR}"].replace(".parquet", ".manifest.json")).unlink()
        before = stamps(LocalStorage(root))
        fresh = LocalStorage(root)  # a new process: no cached checksums
        again = {c.source.name: c.status for c in refresh_tables(wh, sources, fresh, threads=2)}
    finally:
        wh.close()
    assert {n for n, s in again.items() if s == "extracted"} == set(key)
    after = stamps(fresh)
    untouched = {k for k in before if not any(k.startswith(f"{PAIR}/{n}/") for n in key)}
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert pq.read_table(truncated).num_rows == 600
    require_chunks(fresh, sources, ALL_TIME, f"pair {PAIR}")


# -- refresh by day partition ---------------------------------------------------------------
def _states(warehouse: EmbeddedWarehouse, catalog: Catalog) -> dict[str, set]:
    out: dict[str, set] = {}
    for dataset in {s.dataset for s in pair_sources(catalog)}:
        names = [s.name for s in pair_sources(catalog) if s.dataset == dataset]
        for name, states in warehouse.partition_states(dataset, names).items():
            out[name] = {(p.day, p.rows, p.last_modified) for p in states}
    return out


def test_refresh_after_an_appended_day_equals_a_from_scratch_build(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt")
    first = refresh_tables(warehouse, sources, storage, threads=2)
    assert counts(first)["reused"] == counts(first)["compacted"] == 0
    assert len(warehouse.reads) == len(sources)  # all of a table's chunks in one read
    full_bytes = sum(b for _, _, b, _ in warehouse.reads)
    before = _states(warehouse, catalog)

    warehouse.append(DAY)  # Thursday 1 February: January is a closed month now
    warehouse.reads.clear()
    progress: list[RefreshProgress] = []
    refreshed = refresh_tables(
        warehouse, sources, storage, threads=2, progress=progress.append, progress_every=5
    )
    now = _states(warehouse, catalog)
    changed = {n: {d for d, *s in now[n] - before[n]} for n in now}
    # Exactly the chunks holding a new or changed day are read, each table's in one read
    # restricted to them; January (now closed) becomes one month chunk made from its day
    # chunks, without a warehouse read.
    for done in refreshed:
        days = changed[done.source.name]
        for chunk in done.chunks:
            held = {date.fromisoformat(d) for d in chunk.manifest.partitions}
            assert (chunk.status == "extracted") == bool(held & days), done.source.name
    # Tables whose January was the newest month (cut by day) now have it as one chunk, made
    # from its day chunks where no January day changed (the targets' look-ahead tail did).
    by_day = {c.source.name for c in first if any(k.manifest.first.startswith("2024-01-2")
                                                  for k in c.chunks)}  # fmt: skip
    revised = {n for n, days in changed.items() if any(d.month == 1 for d in days)}
    assert revised == {catalog.targets[PAIR].name}
    assert by_day and counts(refreshed)["compacted"] == len(by_day - revised)
    compacted = [k for c in refreshed for k in c.chunks if k.status == "compacted"]
    assert {(k.manifest.first, k.manifest.last, k.manifest.method, k.manifest.bytes_read)
            for k in compacted} == {("2024-01-01", "2024-01-31", "compacted", 0)}  # fmt: skip
    assert len(warehouse.reads) == len(sources)
    # The targets' January is read again as one month: its last day's targets took values.
    assert all(
        w.start >= datetime(2024, 1, 31 if name not in revised else 1, tzinfo=UTC)
        for name, w, _, _ in warehouse.reads
    )
    assert sum(c.bytes_read for c in refreshed) == sum(b for _, _, b, _ in warehouse.reads)
    assert sum(c.bytes_read for c in refreshed) < full_bytes
    # Progress: every 5 tables and the last, with the chunks counted so far.
    assert [p.done for p in progress] == [5, 10, 15] and progress[-1].total == len(sources)
    last = progress[-1]
    assert last.chunks_extracted == counts(refreshed)["extracted"]
    assert last.chunks_reused == counts(refreshed)["reused"] + counts(refreshed)["compacted"]
    assert last.line().startswith(f"tables 15/15: chunks {last.chunks_extracted} extracted")
    # Only the planned chunks remain (the January day chunks went with the compaction).
    files = _chunk_files(storage)
    assert len(files) == sum(len(c.chunks) for c in refreshed)
    assert not any("2024-01-30_2024-01-30" in k for k in files)

    scratch = LocalStorage(tmp_path / "scratch")
    again = refresh_tables(warehouse, sources, scratch, threads=2)
    assert counts(again)["extracted"] == sum(len(c.chunks) for c in refreshed)
    assert_same(
        merged(storage, catalog, tmp_path / "refreshed"),
        merged(scratch, catalog, tmp_path / "scratch-out"),
    )
    # Nothing changed since: everything is reused and nothing read or written.
    warehouse.reads.clear()
    files = stamps(storage)
    idle = refresh_tables(warehouse, sources, storage, threads=2)
    assert counts(idle)["reused"] == sum(len(c.chunks) for c in refreshed)
    assert warehouse.reads == [] and stamps(storage) == files


def test_a_closed_month_is_compacted_from_its_day_chunks_or_read_when_one_is_damaged(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    intact, damaged = LocalStorage(tmp_path / "intact"), LocalStorage(tmp_path / "damaged")
    for storage in (intact, damaged):
        refresh_tables(warehouse, [table], storage, threads=1)
    day = damaged.root / PAIR / table.name / "2024-01-30_2024-01-30.parquet"
    day.write_bytes(day.read_bytes()[:-1])
    warehouse.append_minutes(table.dataset, table.name, DAY)  # 1 February: January closes
    warehouse.reads.clear()
    (compacted,) = refresh_tables(warehouse, [table], intact, threads=1)
    assert [(c.manifest.first, c.status) for c in compacted.chunks] == [
        ("2024-01-01", "compacted"),
        ("2024-02-01", "extracted"),
    ]
    assert [w for _, w, _, _ in warehouse.reads] == [
        DateRange(utc(date(2024, 2, 1)), utc(date(2024, 2, 2)))
    ]
    warehouse.reads.clear()
    (read,) = refresh_tables(warehouse, [table], damaged, threads=1)
    assert [(c.manifest.first, c.status) for c in read.chunks] == [
        ("2024-01-01", "extracted"),
        ("2024-02-01", "extracted"),
    ]
    assert [w.start for _, w, _, _ in warehouse.reads] == [utc(date(2024, 1, 1))]  # one read
    for storage in (intact, damaged):
        assert _chunk_files(storage) == {
            f"{PAIR}/{table.name}/2024-01-01_2024-01-31.parquet",
            f"{PAIR}/{table.name}/2024-02-01_2024-02-01.parquet",
        }
    month = f"{PAIR}/{table.name}/2024-01-01_2024-01-31.parquet"
    assert pq.read_table(intact.local_path(month)).equals(pq.read_table(damaged.local_path(month)))


def test_a_corrected_historical_day_re_extracts_only_its_chunk(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, sources, storage, threads=2)
    before = merged(storage, catalog, tmp_path / "before")
    path = warehouse.path
    warehouse.close()
    correct_day(path, catalog, f"agg_{PAIR}", date(2024, 1, 30))
    wh = CountingWarehouse(path)
    try:
        done = refresh_tables(wh, sources, storage, threads=2)
        assert counts(done)["extracted"] == 1
        assert [(t, w) for t, w, _, _ in wh.reads] == [
            (f"agg_{PAIR}", DateRange(utc(date(2024, 1, 30)), utc(date(2024, 1, 31))))
        ]
        after = merged(storage, catalog, tmp_path / "after")
        scratch = LocalStorage(tmp_path / "scratch")
        refresh_tables(wh, sources, scratch, threads=2)
    finally:
        wh.close()
    assert_same(after, merged(scratch, catalog, tmp_path / "scratch-out"))
    changed = [n for n in after.column_names if not after.column(n).equals(before.column(n))]
    assert changed and all(n.startswith("agg__") for n in changed)


def test_a_fixed_window_cuts_every_read_to_it(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt")
    window = DateRange(utc(date(2024, 1, 30)), utc(date(2024, 1, 31)))
    wh = CountingWarehouse(three_days, read_only=True)
    try:
        done = refresh_tables(wh, sources, storage, window=window, threads=2)
    finally:
        wh.close()
    assert all(window.start <= w.start and w.end <= window.end for _, w, _, _ in wh.reads)
    # One chunk per table, Tuesday's: the newest month inside the window is cut by day (the
    # shared tables' minutes into February are outside it).
    assert [[(c.manifest.first, c.manifest.last) for c in d.chunks] for d in done] == [
        [("2024-01-30", "2024-01-30")]
    ] * len(sources)
    data = merged(storage, catalog, tmp_path / "day", window)
    keys = data.column(KEY)
    assert keys[0].as_py().date() == keys[-1].as_py().date() == date(2024, 1, 30)


def test_a_window_without_partitions_or_rows_is_an_error_naming_the_table(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    storage = LocalStorage(tmp_path / "ckpt")
    wh = EmbeddedWarehouse(three_days)
    try:
        (states,) = wh.partition_states(table.dataset, [table.name]).values()
        march = DateRange(utc(date(2024, 3, 1)))
        with pytest.raises(ExtractionError, match=rf"agg_{PAIR} has no partitions in the window"):
            refresh_table(wh, table, storage, states, window=march)
        # A window inside a day, between its rows: a chunk is made, but it holds no row.
        empty = DateRange(datetime(2024, 1, 30, 0, 0, 30, tzinfo=UTC),
                          datetime(2024, 1, 30, 0, 0, 40, tzinfo=UTC))  # fmt: skip
        with pytest.raises(ExtractionError, match=rf"agg_{PAIR} has no rows in the window"):
            refresh_table(wh, table, storage, states, window=empty)
    finally:
        wh.close()


def test_bad_extraction_modes_are_refused_before_anything_is_read(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    storage = LocalStorage(tmp_path / "ckpt")
    wh = CountingWarehouse(three_days, read_only=True)
    try:
        (states,) = wh.partition_states(table.dataset, [table.name]).values()
        with pytest.raises(
            ExtractionError, match="extraction mode 'copy' is not one of read, export"
        ):
            refresh_table(wh, table, storage, states, mode="copy")  # type: ignore[arg-type]
        with pytest.raises(ExtractionError, match=rf"agg_{PAIR}: export mode needs a staging URI"):
            refresh_table(wh, table, storage, states, mode="export")
        assert wh.reads == [] and list(storage.list()) == []
        # A warehouse without an export (the embedded one) reads the chunks instead.
        done = refresh_table(wh, table, storage, states, mode="export", staging_uri="gs://s/x")
    finally:
        wh.close()
    assert {c.manifest.method for c in done.chunks} == {"read"} and len(wh.reads) == 1


class ExportingWarehouse(CountingWarehouse):
    """The embedded warehouse with an export of whole tables, as BigQuery's extract job gives
    them (every row, no bytes billed), recording each export."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.exports: list[str] = []

    def export_table(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        staging_uri: str,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        self.exports.append(table)
        read = EmbeddedWarehouse.read(self, dataset, table, columns, ALL_TIME, cut=cut)
        return TableRead(read.data, 0)


def test_export_mode_takes_chunks_far_apart_from_one_export_of_their_table(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    """Two corrected days with an unchanged day between them: one export of the table gives
    both days' chunks (an export is of the whole table, however far apart the chunks are);
    the day between is reused and no other table is exported or read."""
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, sources, storage, grain="day", threads=2)
    path = warehouse.path
    warehouse.close()
    for day in (date(2024, 1, 29), date(2024, 1, 31)):
        correct_day(path, catalog, f"agg_{PAIR}", day)
    exporting = ExportingWarehouse(path)
    try:
        done = refresh_tables(exporting, sources, storage, grain="day", threads=2,
                              mode="export", staging_uri="gs://staging/exports")  # fmt: skip
        assert exporting.exports == [f"agg_{PAIR}"] and exporting.reads == []
        agg = next(c for c in done if c.source.name == f"agg_{PAIR}")
        assert [(c.manifest.first, c.status, c.manifest.method) for c in agg.chunks] == [
            ("2024-01-29", "extracted", "export"),
            ("2024-01-30", "reused", "read"),
            ("2024-01-31", "extracted", "export"),
        ]
        assert agg.bytes_read == 0
        scratch = LocalStorage(tmp_path / "scratch")
        refresh_tables(exporting, sources, scratch, grain="day", threads=2)
    finally:
        exporting.close()
    assert_same(
        merged(storage, catalog, tmp_path / "exported"),
        merged(scratch, catalog, tmp_path / "scratch-out"),
    )


def test_a_wide_run_of_chunks_is_read_in_bounded_reads_into_the_same_chunks(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    # January's three days (one month chunk once February starts), then 1 February and 600
    # minutes of the 2nd (a chunk per day of the newest month).
    warehouse.append_minutes(table.dataset, table.name, DAY + 600)
    whole, split = LocalStorage(tmp_path / "whole"), LocalStorage(tmp_path / "split")
    (one,) = refresh_tables(warehouse, [table], whole, threads=1)
    assert [rows for *_, rows in warehouse.reads] == [4 * DAY + 600]  # one read of the table

    warehouse.reads.clear()
    # Reads of at most a day: the month chunk is a read of its own, then one read per day.
    monkeypatch.setattr(schema, "READ_BYTES", DAY * 8 * (1 + len(table.columns)))
    assert rows_per_read(table) == DAY
    (again,) = refresh_tables(warehouse, [table], split, threads=1)
    assert [rows for *_, rows in warehouse.reads] == [3 * DAY, DAY, 600]
    assert [w.start for _, w, _, _ in warehouse.reads] == [
        datetime(2024, 1, 1, tzinfo=UTC),  # the month's calendar bounds
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 2, 2, tzinfo=UTC),
    ]
    assert [c.manifest.rows for c in again.chunks] == [3 * DAY, DAY, 600]
    assert again.bytes_read == one.bytes_read
    for a, b in zip(one.chunks, again.chunks, strict=True):
        key = a.key(PAIR)
        assert b.key(PAIR) == key
        assert pq.read_table(split.local_path(key)).equals(pq.read_table(whole.local_path(key)))


# -- failures: named, and nothing already written lost ------------------------------------------
def test_a_failing_table_does_not_stop_the_others_and_the_error_names_it(
    mini: tuple[Catalog, Path], mini_copy: CountingWarehouse, tmp_path: Path
) -> None:
    """Duplicate keys in one table and another table dropped: both named, with the reason; the
    other tables' chunks are written and verified; the two have none, which a check of the
    step names."""
    catalog, _ = mini
    ds = catalog.features_dataset
    cursor = mini_copy._cursor()
    cursor.execute(
        f'INSERT INTO "{ds}"."mkt_sentiment" SELECT * FROM "{ds}"."mkt_sentiment" LIMIT 3'
    )
    cursor.execute(f'DROP TABLE "{ds}"."regime_{PAIR}_45"')
    cursor.execute(
        'DELETE FROM "_bqx_meta"."partitions" WHERE table_name = ?', [f"regime_{PAIR}_45"]
    )
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt")
    with pytest.raises(ExtractionError) as err:
        refresh_tables(mini_copy, sources, storage, threads=2)
    text = str(err.value)
    assert f"2 of {len(sources)} tables failed, the other chunks are kept" in text
    assert "mkt_sentiment has duplicate interval_time values" in text
    assert "2024-01-01T00:00:00+00:00" in text
    assert f"regime_{PAIR}_45: not found in the warehouse" in text
    broken = {"mkt_sentiment", f"regime_{PAIR}_45"}
    kept = [s for s in sources if s.name not in broken]
    assert set(require_chunks(storage, kept, ALL_TIME, f"pair {PAIR}")) == {s.name for s in kept}
    with pytest.raises(
        ExtractionError,
        match=rf"pair {PAIR}: 2 of {len(sources)} tables have no verified checkpoint: "
        rf"regime_{PAIR}_45, mkt_sentiment \(first: .*regime_{PAIR}_45: no verified chunk",
    ):
        require_chunks(storage, sources, ALL_TIME, f"pair {PAIR}")


def test_a_table_that_disagrees_with_its_partitions_fails_by_name_and_keeps_the_rest(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    """Rows read for a day that differ from the day's partition count (the table changed while
    it was read) fail that table, naming it and the days; the other tables' chunks and the
    table's earlier chunks stay as they were."""
    catalog, _ = mini
    sources = pair_sources(catalog)
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, sources, storage, threads=2)
    before = {k: storage.stat(k) for k in storage.list()}
    table = catalog.table(f"tmp_{PAIR}")
    path = warehouse.path
    warehouse.close()
    con = connect(path, read_only=False)
    try:
        con.execute(
            'UPDATE "_bqx_meta"."partitions" SET rows = rows + 1, last_modified = now() '
            "WHERE dataset = ? AND table_name = ? AND day = ?",
            [table.dataset, table.name, date(2024, 1, 30)],
        )
    finally:
        con.close()
    wh = CountingWarehouse(path)
    try:
        with pytest.raises(
            ExtractionError,
            match=rf"1 of 15 tables failed.*tmp_{PAIR}: days 2024-01-30\.\.2024-01-30 have "
            r"1440 rows, their partitions say 1441: the table changed while it was read",
        ):
            refresh_tables(wh, sources, storage, threads=2)
    finally:
        wh.close()
    assert {k: storage.stat(k) for k in storage.list()} == before


def test_success_needs_every_table_s_verified_chunks(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    """A checkpoint step succeeds with verified chunks for every table the catalog lists,
    never fewer: none listed, or a table missing from the warehouse, is an error."""
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    sources = pair_sources(catalog)
    spines = [catalog.targets[PAIR]]
    wh = EmbeddedWarehouse(three_days)
    try:
        with pytest.raises(ExtractionError, match=f"pair {PAIR}: the catalog lists no tables"):
            refresh_checkpoints(wh, storage, [], spines, TrainingWindow(), f"pair {PAIR}")
        step = refresh_checkpoints(
            wh, storage, sources, spines, TrainingWindow(days=2), f"pair {PAIR}", threads=2
        )
        assert step.window.training == DateRange(utc(date(2024, 1, 30)))
        assert [c.source for c in step.checkpoints] == sources
        assert step.bytes_read == sum(c.bytes_read for c in step.checkpoints) > 0
        assert set(step.by_family()) >= {"targets", "agg", "tri", "csi"}
        assert sum(len(v) for v in step.by_family().values()) == len(sources)
        missing = dataclasses.replace(catalog.table(f"agg_{PAIR}"), name=f"agg_{PAIR}_gone")
        with pytest.raises(ExtractionError, match=rf"agg_{PAIR}_gone: not found in the warehouse"):
            refresh_checkpoints(wh, storage, [*sources, missing], spines, TrainingWindow(days=2),
                                f"pair {PAIR}", threads=2)  # fmt: skip
    finally:
        wh.close()


# -- what a killed writer leaves ---------------------------------------------------------------
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.checkpoints.refresh import refresh_tables
    from bqx_assets.core.storage import LocalStorage
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

    class Slow(EmbeddedWarehouse):
        def read(self, *args, **kwargs):
            time.sleep(0.3)  # slow enough to be killed part-way
            return super().read(*args, **kwargs)

    catalog = Catalog.load(sys.argv[1])
    sources = [catalog.targets["eurusd"], *catalog.tables_for("eurusd")]
    wh = Slow(sys.argv[2])
    refresh_tables(wh, sources, LocalStorage(sys.argv[3]), grain="day", threads=1,
                   workdir=Path(sys.argv[4]))
    """
)


def test_a_killed_refresh_resumes_without_redoing_finished_chunks(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    catalog, catalog_path = mini
    sources = pair_sources(catalog)
    root, work = tmp_path / "ckpt", tmp_path / "work"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(catalog_path), str(three_days), str(root), str(work)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    storage = LocalStorage(root)
    deadline = time.monotonic() + 120
    try:
        while len([k for k in storage.list() if k.endswith(".manifest.json")]) < 6:
            assert child.poll() is None, "the refresh ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    finished = {k for k in storage.list() if k.endswith(".manifest.json")}
    assert len(finished) >= 6
    stamps_before = stamps(storage)
    # What a writer killed while publishing leaves: a temporary file beside the chunks.
    folder = root / PAIR / f"agg_{PAIR}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".2024-01-31_2024-01-31.parquet.0123abcd.tmp").write_bytes(b"partial")

    wh = CountingWarehouse(three_days, read_only=True)
    try:
        done = refresh_tables(wh, sources, storage, grain="day", threads=2, workdir=work)
        scratch = LocalStorage(tmp_path / "scratch")
        refresh_tables(wh, sources, scratch, grain="day", threads=2)
    finally:
        wh.close()
    by_status = counts(done)
    assert by_status["reused"] == len(finished)
    assert by_status["extracted"] == sum(len(c.chunks) for c in done) - len(finished) > 0
    assert not list(root.rglob("*.tmp")) and not list(work.rglob("*.tmp"))
    after = stamps(storage)
    assert all(after[k] == stamps_before[k] for k in finished)  # finished chunks untouched
    assert_same(
        merged(storage, catalog, tmp_path / "resumed"),
        merged(scratch, catalog, tmp_path / "scratch-out"),
    )


def test_only_dead_writers_local_temporary_files_are_cleared(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    """The work folder can be shared by other runs on the machine: a refresh clears only the
    temporary files of its table's writers that no longer run."""
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    work = tmp_path / "work"
    work.mkdir()
    live = work / f".{table.name}.2024-01-30_2024-01-30.{os.getpid()}-aa.tmp"
    gone = work / f".{table.name}.2024-01-30_2024-01-30.{dead.pid}-bb.tmp"
    unnamed = work / f".{table.name}.2024-01-30_2024-01-30.nopid.tmp"
    other = work / f".tmp_{PAIR}.2024-01-30_2024-01-30.{dead.pid}-cc.tmp"
    for path in (live, gone, unnamed, other):
        path.write_bytes(b"partial")
    wh = EmbeddedWarehouse(three_days)
    try:
        (states,) = wh.partition_states(table.dataset, [table.name]).values()
        refresh_table(wh, table, LocalStorage(tmp_path / "ckpt"), states, workdir=work)
    finally:
        wh.close()
    assert live.exists() and other.exists()
    assert not gone.exists() and not unnamed.exists()


@pytest.mark.emulator
def test_chunks_in_gcs_clear_a_dead_writers_objects_and_are_read_in_place(
    gcs_emulator: GCSEmulator, mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    bucket = gcs_emulator.create_bucket()
    storage = open_storage(f"gs://{bucket}/checkpoints")
    # An upload a killed writer left in a chunk folder.
    dead = f"checkpoints/{PAIR}/agg_{PAIR}/.2024-01-30_2024-01-30.parquet.0123abcd.tmp"
    gcs_emulator.client().bucket(bucket).blob(dead).upload_from_string(b"partial")
    assert list(storage.temporaries(f"{PAIR}/agg_{PAIR}")) == [dead.removeprefix("checkpoints/")]
    wh = EmbeddedWarehouse(three_days)
    try:
        cut = wh.cut()  # both as of one moment: their manifests record it
        refresh_tables(wh, sources, storage, threads=2, cut=cut)
        local = LocalStorage(tmp_path / "local")
        refresh_tables(wh, sources, local, threads=2, cut=cut)
    finally:
        wh.close()
    assert not list(storage.temporaries(f"{PAIR}/agg_{PAIR}"))
    # The same chunks as a local root's, byte for byte (their manifests say so), read in place.
    for source in sources:
        assert stored_manifests(storage, source).manifests == (
            stored_manifests(local, source).manifests
        ), source.name
    inputs = pair_inputs(storage, catalog, PAIR, ALL_TIME)
    assert all(c.file.remote for t in (inputs.spine, *inputs.tables) for c in t.chunks)
    assert_same(
        merged(storage, catalog, tmp_path / "gcs"),
        merged(local, catalog, tmp_path / "local-out"),
    )


@pytest.mark.emulator
def test_a_cov_table_refreshed_by_both_its_pairs_at_once_is_published_once_and_both_succeed(
    gcs_emulator: GCSEmulator, mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    """The checkpoint steps of eurusd and gbpusd (production's pool lets 4 such steps run)
    refresh their shared cov table at once, as of one cut: both plan every chunk as missing,
    and the first two copies to each chunk meet at the proxy. GCS refuses the later copy (its
    generation precondition), whose writer keeps the other's identical chunk: both steps
    succeed, with the chunks a lone refresh makes."""
    catalog, _ = mini
    table = catalog.table("cov_agg_eurusd_gbpusd")
    bucket = gcs_emulator.create_bucket()
    arrived: dict[str, int] = {}
    meetings: dict[str, threading.Barrier] = {}
    lock = threading.Lock()

    def first_two_copies_meet(exchange: Exchange) -> Reply | None:
        if "/rewriteTo/" in exchange.route and exchange.route.endswith(".parquet"):
            chunk = exchange.route.rsplit("/o/", 1)[1]
            with lock:
                arrived[chunk] = arrived.get(chunk, 0) + 1
                barrier = meetings.setdefault(chunk, threading.Barrier(2, timeout=30))
                meets = arrived[chunk] <= 2
            if meets:
                barrier.wait()
        return None

    wh = EmbeddedWarehouse(three_days)
    try:
        cut = wh.cut()
        (states,) = wh.partition_states(table.dataset, [table.name], cut=cut).values()
        with gcs_as_google_answers(gcs_emulator, first_two_copies_meet) as proxy:
            storage = GCSStorage(bucket, "checkpoints", client=gcs_emulator.client(proxy.endpoint))

            def step(pair: str) -> ChunkedCheckpoint:
                work = tmp_path / pair
                return refresh_table(wh, table, storage, states, workdir=work, cut=cut)

            with ThreadPoolExecutor(2) as pool:
                done = list(pool.map(step, MINI_PAIRS))
            refused = [e for e in proxy.sent("POST", "/rewriteTo/") if e.status == 412]
        local = LocalStorage(tmp_path / "local")
        alone = refresh_table(wh, table, local, states, cut=cut)
    finally:
        wh.close()
    assert refused, "the two steps' copies did not meet"
    crcs = [sorted(c.manifest.crc32c for c in d.chunks) for d in (*done, alone)]
    assert crcs[0] == crcs[1] == crcs[2]
    stored = stored_manifests(GCSStorage(bucket, "checkpoints"), table)
    assert sorted(m.crc32c for m in stored.manifests.values()) == crcs[2]
    assert not list(GCSStorage(bucket, "checkpoints").temporaries(f"shared/{table.name}"))


@pytest.mark.parametrize("given", [False, True], ids=["own-cut", "given-cut"])
def test_a_checkpoint_step_looks_up_each_dataset_s_partitions_once(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path, given: bool
) -> None:
    """The window, the check that a given cut is usable and the refresh take one look-up per
    dataset (each a metadata query billed on BigQuery), all as of the step's cut."""
    catalog, _ = mini
    sources = pair_sources(catalog)
    cut = warehouse.cut() if given else None
    storage = LocalStorage(tmp_path / "ckpt", durable=False)
    step = refresh_checkpoints(
        warehouse, storage, sources, [catalog.targets[PAIR]], TrainingWindow(days=2),
        f"pair {PAIR}", threads=2, cut=cut,
    )  # fmt: skip
    assert sorted(d for d, _, _ in warehouse.lookups) == sorted({s.dataset for s in sources})
    assert {at for _, _, at in warehouse.lookups} == {step.cut}
    assert step.cut == (cut or step.cut) and len(step.checkpoints) == len(sources)
