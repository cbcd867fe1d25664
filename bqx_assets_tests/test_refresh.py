"""Refresh by date partition: chunked checkpoints, a refresh that reads only changed days, and a
merge over chunks that equals a from-scratch build."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.chunks import (
    ChunkedCheckpoint,
    PairInputs,
    chunk_inputs,
    chunk_ranges,
    clear_temporaries,
    pair_inputs,
    refresh_tables,
)
from bqx_assets.core.checkpoints.extraction import Source, expected_schema, owner_of
from bqx_assets.core.errors import ExtractionError, MergeError
from bqx_assets.core.layout import KEY, chunk_index_key
from bqx_assets.core.merge.join import FeatureSource, merge_checkpoints
from bqx_assets.core.storage import LocalStorage, StoredFile, open_storage
from bqx_assets.core.warehouse import DateRange, TableRead
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, connect, create_warehouse
from bqx_assets_tests.emulators import gcs as gcs_fixtures
from bqx_assets_tests.emulators.bigquery import (
    BigQueryEmulator,
    bigquery_emulator,  # noqa: F401 - the session fixture
    load_tables,
)

gcs_emulator = gcs_fixtures.gcs_emulator

PAIR = "eurusd"
START = datetime(2024, 1, 29, tzinfo=UTC)  # a Monday: three days of January, then February
DAY = 1440


class CountingWarehouse(EmbeddedWarehouse):
    """The embedded warehouse, recording each read: (table, window, bytes)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, read_only=False)
        self.reads: list[tuple[str, DateRange, int]] = []

    def read(
        self, dataset: str, table: str, columns: Sequence[str], window: DateRange
    ) -> TableRead:
        done = super().read(dataset, table, columns, window)
        self.reads.append((table, window, done.bytes_read))
        return done


def _sources(catalog: Catalog) -> list[Source]:
    return [catalog.targets[PAIR], *catalog.tables_for(PAIR)]


def _merge(
    catalog: Catalog, storage: LocalStorage, out: Path, window: DateRange | None = None
) -> pa.Table:
    inputs = pair_inputs(storage, catalog, PAIR, window or DateRange())
    merge_checkpoints(inputs.spine, inputs.spine_columns, inputs.features, out)
    return pq.read_table(out)


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert a.column(name).equals(b.column(name)), name


@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path]) -> Path:
    """The mini catalog's eurusd tables, Monday 29 to Wednesday 31 January 2024."""
    catalog, _ = mini
    path = tmp_path_factory.mktemp("refresh") / "w.duckdb"
    create_warehouse(path, catalog, pairs=[PAIR], rows=3 * DAY, start=START).close()
    return path


@pytest.fixture
def warehouse(three_days: Path, tmp_path: Path) -> CountingWarehouse:
    path = tmp_path / "w.duckdb"
    path.write_bytes(three_days.read_bytes())
    wh = CountingWarehouse(path)
    yield wh
    wh.close()


def _counts(done: Sequence[ChunkedCheckpoint]) -> dict[str, int]:
    return {
        status: sum(c.count(status) for c in done)  # type: ignore[arg-type]
        for status in ("extracted", "reused", "compacted")
    }


def test_chunk_layout_months_closed_days_open() -> None:
    days = [date(2024, 1, d) for d in (29, 30, 31)] + [date(2024, 2, 1), date(2024, 2, 2)]
    ranges = chunk_ranges(days, DateRange())
    assert [(r.first, r.last) for r in ranges] == [
        (date(2024, 1, 1), date(2024, 1, 31)),
        (date(2024, 2, 1), date(2024, 2, 1)),
        (date(2024, 2, 2), date(2024, 2, 2)),
    ]
    assert len(chunk_ranges(days, DateRange(), "day")) == 5
    # The window cuts chunks: the January chunk starts at the window, February 2 is left out.
    window = DateRange(datetime(2024, 1, 30, 12, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC))
    cut = chunk_ranges(days, window)
    assert (cut[0].start, cut[0].end) == (window.start, datetime(2024, 2, 1, tzinfo=UTC))
    assert [r.first for r in cut] == [date(2024, 1, 1), date(2024, 2, 1)]
    assert not cut[0].whole and cut[1].whole


def _changed_days(
    warehouse: EmbeddedWarehouse, catalog: Catalog, before: dict[str, set]
) -> dict[str, set[date]]:
    """Per table, the days whose partition state differs from `before` (or is new)."""
    now = _states(warehouse, catalog)
    return {
        n: {p.day for p in ps if (p.day, (p.rows, p.last_modified)) not in before[n]}
        for n, ps in now.items()
    }


def _states(warehouse: EmbeddedWarehouse, catalog: Catalog) -> dict[str, tuple]:
    out = {}
    for dataset in {s.dataset for s in _sources(catalog)}:
        names = [s.name for s in _sources(catalog) if s.dataset == dataset]
        out.update(warehouse.partition_states(dataset, names))
    return out


def test_refresh_after_an_appended_day_equals_a_from_scratch_build(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    first = refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    tables = len(_sources(catalog))
    assert _counts(first)["reused"] == _counts(first)["compacted"] == 0
    assert len(warehouse.reads) == tables  # all of a table's chunks in one read
    full_bytes = sum(b for _, _, b in warehouse.reads)
    before = {
        n: {(p.day, (p.rows, p.last_modified)) for p in ps}
        for n, ps in _states(warehouse, catalog).items()
    }

    warehouse.append(2 * DAY)  # Thursday 1 and Friday 2 February
    warehouse.reads.clear()
    refreshed = refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    changed = _changed_days(warehouse, catalog, before)
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
    assert revised == {catalog.targets["eurusd"].name}
    assert by_day and _counts(refreshed)["compacted"] == len(by_day - revised)
    assert len(warehouse.reads) == tables
    # The targets' January is read again as one month: its last day's targets took values.
    assert all(
        w.start >= datetime(2024, 1, 31 if name not in revised else 1, tzinfo=UTC)
        for name, w, _ in warehouse.reads
    )
    assert sum(c.bytes_read for c in refreshed) == sum(b for _, _, b in warehouse.reads)
    assert sum(c.bytes_read for c in refreshed) < full_bytes
    # Only the planned chunks remain (the January day chunks went with the compaction).
    files = {k for k in storage.list() if k.endswith(".parquet")}
    assert len(files) == sum(len(c.chunks) for c in refreshed)
    assert not any("2024-01-30_2024-01-30" in k for k in files)

    scratch = LocalStorage(tmp_path / "scratch")
    again = refresh_tables(warehouse, _sources(catalog), scratch, threads=2)
    assert _counts(again)["extracted"] == sum(len(c.chunks) for c in refreshed)
    _assert_same(
        _merge(catalog, storage, tmp_path / "refreshed.parquet"),
        _merge(catalog, scratch, tmp_path / "scratch.parquet"),
    )
    # Nothing changed since: everything is reused and nothing read.
    warehouse.reads.clear()
    idle = refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    assert _counts(idle)["reused"] == sum(len(c.chunks) for c in refreshed)
    assert warehouse.reads == []


def _correct_day(path: Path, catalog: Catalog, table: str, day: date) -> None:
    """A correction upstream: one day of one table rewritten, its partition's time updated."""
    source = catalog.table(table)
    column = next(c.name for c in source.columns if c.dtype == "FLOAT64")
    con = connect(path, read_only=False)
    try:
        con.execute(
            f'UPDATE "{source.dataset}"."{table}" SET "{column}" = "{column}" + 1 '
            f'WHERE CAST("{KEY}" AS DATE) = ?',
            [day],
        )
        con.execute(
            'UPDATE "_bqx_meta"."partitions" SET last_modified = now() '
            "WHERE dataset = ? AND table_name = ? AND day = ?",
            [source.dataset, table, day],
        )
    finally:
        con.close()


def test_a_corrected_historical_day_re_extracts_only_its_chunk(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    before = _merge(catalog, storage, tmp_path / "before.parquet")
    path = warehouse.path
    warehouse.close()
    _correct_day(path, catalog, f"agg_{PAIR}", date(2024, 1, 30))
    warehouse = CountingWarehouse(path)
    done = refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    assert _counts(done)["extracted"] == 1
    assert [(t, w) for t, w, _ in warehouse.reads] == [
        (
            f"agg_{PAIR}",
            DateRange(datetime(2024, 1, 30, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC)),
        )
    ]
    after = _merge(catalog, storage, tmp_path / "after.parquet")
    scratch = LocalStorage(tmp_path / "scratch")
    refresh_tables(warehouse, _sources(catalog), scratch, threads=2)
    _assert_same(after, _merge(catalog, scratch, tmp_path / "scratch.parquet"))
    changed = [n for n in after.column_names if not after.column(n).equals(before.column(n))]
    assert changed and all(n.startswith("agg__") for n in changed)
    warehouse.close()


class ExportingWarehouse(CountingWarehouse):
    """The embedded warehouse with an export of whole tables, as BigQuery's extract job gives
    them (every row, no bytes billed), recording each export."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.exports: list[str] = []

    def export_table(
        self, dataset: str, table: str, columns: Sequence[str], staging_uri: str
    ) -> TableRead:
        self.exports.append(table)
        return TableRead(EmbeddedWarehouse.read(self, dataset, table, columns, DateRange()).data, 0)


def test_export_mode_takes_chunks_far_apart_from_one_export_of_their_table(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    """Two corrected days with an unchanged day between them: one export of the table gives
    both days' chunks (an export is of the whole table, however far apart the chunks are);
    the day between is reused and no other table is exported or read."""
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, _sources(catalog), storage, grain="day", threads=2)
    path = warehouse.path
    warehouse.close()
    for day in (date(2024, 1, 29), date(2024, 1, 31)):
        _correct_day(path, catalog, f"agg_{PAIR}", day)
    exporting = ExportingWarehouse(path)
    try:
        done = refresh_tables(exporting, _sources(catalog), storage, grain="day", threads=2,
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
        refresh_tables(exporting, _sources(catalog), scratch, grain="day", threads=2)
    finally:
        exporting.close()
    _assert_same(
        _merge(catalog, storage, tmp_path / "exported.parquet"),
        _merge(catalog, scratch, tmp_path / "scratch.parquet"),
    )


def test_the_window_selects_chunks_and_others_are_not_read(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    window = DateRange(datetime(2024, 1, 30, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC))
    refresh_tables(warehouse, _sources(catalog), storage, window=window, threads=2)
    # Reads are restricted to the window (a month chunk is cut to it).
    assert all(window.start <= w.start and w.end <= window.end for _, w, _ in warehouse.reads)
    inputs = chunk_inputs(storage, _sources(catalog), window, PAIR)
    assert {len(v) for v in inputs.values()} == {1}
    assert all(
        "2024-01-30_2024-01-30" in str(v[0]) or "2024-01-01_2024-01-31" in str(v[0])
        for v in inputs.values()
    )
    merged = _merge(catalog, storage, tmp_path / "day.parquet", window)
    keys = merged.column(KEY)
    assert keys[0].as_py().date() == keys[-1].as_py().date() == date(2024, 1, 30)
    with pytest.raises(ExtractionError, match="no verified chunk"):
        chunk_inputs(storage, _sources(catalog), DateRange(start=START.replace(month=3)), PAIR)


def test_duplicate_keys_across_chunks_name_the_table(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    inputs = chunk_inputs(storage, _sources(catalog), DateRange(), PAIR)
    targets = catalog.targets[PAIR]
    table = f"tmp_{PAIR}"
    twice = (*inputs[table], inputs[table][-1])
    out = tmp_path / "out.parquet"
    with pytest.raises(MergeError, match=f"table {table}.*duplicate"):
        merge_checkpoints(inputs[targets.name], targets.targets, [FeatureSource(table, twice)], out)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet.*"))


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.checkpoints.chunks import refresh_tables
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
    from bqx_assets.core.storage import LocalStorage, StoredFile, open_storage

    class Slow(EmbeddedWarehouse):
        def read(self, *args, **kwargs):
            time.sleep(0.4)  # slow enough to be killed part-way
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
    path = tmp_path / "w.duckdb"
    path.write_bytes(three_days.read_bytes())
    root, work = tmp_path / "ckpt", tmp_path / "work"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(catalog_path), str(path), str(root), str(work)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    storage = LocalStorage(root)
    deadline = time.monotonic() + 120
    while len([k for k in storage.list() if k.endswith(".manifest.json")]) < 6:
        assert child.poll() is None, "the refresh ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = {k for k in storage.list() if k.endswith(".manifest.json")}
    assert len(finished) >= 6
    # What a writer killed while publishing leaves: a temporary file beside the chunks.
    folder = root / PAIR / f"agg_{PAIR}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".2024-01-31_2024-01-31.parquet.0123abcd.tmp").write_bytes(b"partial")

    warehouse = CountingWarehouse(path)
    done = refresh_tables(warehouse, _sources(catalog), storage, grain="day", threads=2,
                          workdir=work)  # fmt: skip
    counts = _counts(done)
    assert counts["reused"] == len(finished)
    assert counts["extracted"] == sum(len(c.chunks) for c in done) - len(finished) > 0
    assert not list(root.rglob("*.tmp")) and not list(work.rglob("*.tmp"))
    scratch = LocalStorage(tmp_path / "scratch")
    refresh_tables(warehouse, _sources(catalog), scratch, grain="day", threads=2)
    _assert_same(
        _merge(catalog, storage, tmp_path / "resumed.parquet"),
        _merge(catalog, scratch, tmp_path / "scratch.parquet"),
    )
    warehouse.close()


@pytest.mark.emulator
def test_bigquery_partitions_and_chunk_reads_on_the_emulator(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    mini: tuple[Catalog, Path],
    three_days: Path,
    tmp_path: Path,
) -> None:
    """INFORMATION_SCHEMA.PARTITIONS in one query per dataset, Storage Read sessions restricted
    to each chunk's range, and a training file equal to the embedded warehouse's. The emulator
    reports no per-partition last_modified_time: a changed table's days all take its table's
    time, so there every chunk of a changed table is read again (production reports it per
    day); tables that did not change are reused."""
    catalog, _ = mini
    embedded = EmbeddedWarehouse(three_days)
    dataset = bigquery_emulator.dataset("refresh")
    sources = [dataclasses.replace(s, dataset=dataset) for s in _sources(catalog)]
    rows = {
        s.name: embedded.read(o.dataset, s.name, expected_schema(s).names, DateRange()).data
        for s, o in zip(sources, _sources(catalog), strict=True)
    }
    load_tables(bigquery_emulator.client(), dataset, rows)
    bq = bigquery_emulator.warehouse(dataset, dataset)
    try:
        names = [s.name for s in sources]
        states = bq.partition_states(dataset, names)
        local = {
            **embedded.partition_states(catalog.features_dataset, names),
            **embedded.partition_states(catalog.targets_dataset, names),
        }
        assert {n: [(p.day, p.rows) for p in ps] for n, ps in states.items()} == {
            n: [(p.day, p.rows) for p in ps] for n, ps in local.items()
        }
        storage = LocalStorage(tmp_path / "bq")
        first = refresh_tables(bq, sources, storage, threads=2)
        assert _counts(first)["reused"] == 0
        # Each chunk holds exactly its days' rows: the session's row restriction was applied.
        for done in first:
            for chunk in done.chunks:
                m = chunk.manifest
                assert m.rows == sum(int(v[0]) for v in m.partitions.values()), m.first
        reference = LocalStorage(tmp_path / "embedded")
        refresh_tables(embedded, _sources(catalog), reference, threads=2)
        _assert_same(
            _merge(catalog, storage, tmp_path / "bq.parquet"),
            _merge(catalog, reference, tmp_path / "embedded.parquet"),
        )

        # A new day (Thursday 1 February) in two tables; the others do not change.
        grown = {catalog.targets[PAIR].name, f"agg_{PAIR}"}
        day = pa.scalar(
            datetime(2024, 1, 31, tzinfo=UTC), rows[f"agg_{PAIR}"].schema.field(KEY).type
        )
        new = {}
        for name in grown:
            last = rows[name].filter(pc.greater_equal(rows[name][KEY], day))
            keys = pc.add(last[KEY], pa.scalar(timedelta(days=1), pa.duration("us")))
            new[name] = last.set_column(0, KEY, keys.cast(last.schema.field(KEY).type))
        load_tables(bigquery_emulator.client(), dataset, new)
        again = refresh_tables(bq, sources, storage, threads=2)
        for done in again:
            if done.source.name in grown:
                assert done.chunks[-1].manifest.first == "2024-02-01"
                assert done.chunks[-1].manifest.window[0] == "2024-02-01T00:00:00+00:00"
                assert done.chunks[-1].status == "extracted"
            else:
                assert done.status == "reused", done.source.name
        scratch = LocalStorage(tmp_path / "scratch")
        refresh_tables(bq, sources, scratch, threads=2)
        _assert_same(
            _merge(catalog, storage, tmp_path / "refreshed.parquet"),
            _merge(catalog, scratch, tmp_path / "scratch.parquet"),
        )
    finally:
        bq.close()
        embedded.close()


EXPORT_STAGING = "gs://bqx-ml-staging/exports"


@pytest.mark.emulator
def test_export_mode_chunks_on_the_emulator_equal_read_mode_chunks(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    mini: tuple[Catalog, Path],
    three_days: Path,
    tmp_path: Path,
) -> None:
    """`mode="export"` with chunked checkpoints: a changed table's chunks are taken from one
    extract job of the whole table, split by chunk; their manifests say "export" and bill no
    bytes, and the rows, the chunks and the training file equal a read-mode build's. Chunks
    made either way are current for the other mode.

    What the emulator cannot show: that an extract job is not billed (bytes_read 0 is this
    code's statement of BigQuery's pricing, not a measured bill); a real export's sharding and
    time at production size; per-day last-modified times (the emulator gives a changed table's
    days all its table's time, so every chunk of a changed table is taken from the export here,
    while in production only its changed days' chunks are redone, each refresh still exporting
    the whole table); and GCS itself (the emulator's extract files are read back from its local
    folder)."""
    catalog, _ = mini
    embedded = EmbeddedWarehouse(three_days)
    dataset = bigquery_emulator.dataset("export_chunks")
    sources = [dataclasses.replace(s, dataset=dataset) for s in _sources(catalog)]
    rows = {
        s.name: embedded.read(o.dataset, s.name, expected_schema(s).names, DateRange()).data
        for s, o in zip(sources, _sources(catalog), strict=True)
    }
    embedded.close()
    load_tables(bigquery_emulator.client(), dataset, rows)
    gcs = bigquery_emulator.data_dir / "gcs"
    bq = bigquery_emulator.warehouse(dataset, dataset, gcs_local_root=str(gcs))
    try:
        exported = LocalStorage(tmp_path / "export")
        done = refresh_tables(
            bq, sources, exported, threads=2, mode="export", staging_uri=EXPORT_STAGING
        )
        read = LocalStorage(tmp_path / "read")
        by_read = {c.source.name: c for c in refresh_tables(bq, sources, read, threads=2)}
        for made in done:
            other = by_read[made.source.name]
            assert [c.manifest.method for c in made.chunks] == ["export"] * len(made.chunks)
            assert made.bytes_read == 0 < other.bytes_read
            assert [c.manifest.method for c in other.chunks] == ["read"] * len(other.chunks)
            assert [
                (c.manifest.first, c.manifest.rows, c.manifest.crc32c) for c in made.chunks
            ] == [(c.manifest.first, c.manifest.rows, c.manifest.crc32c) for c in other.chunks], (
                made.source.name
            )
        _assert_same(
            _merge(catalog, exported, tmp_path / "export.parquet"),
            _merge(catalog, read, tmp_path / "read.parquet"),
        )
        staging = gcs / EXPORT_STAGING.removeprefix("gs://")
        assert not staging.exists() or not list(staging.rglob("*.parquet"))  # shards deleted
        # Either mode's chunks are current for the other: nothing is exported or read again.
        again = refresh_tables(bq, sources, read, threads=2, mode="export",
                               staging_uri=EXPORT_STAGING)  # fmt: skip
        assert _counts(again)["extracted"] == 0
    finally:
        bq.close()


@pytest.mark.emulator
def test_chunks_in_gcs_clear_a_dead_writers_objects_and_are_read_in_place(
    gcs_emulator: gcs_fixtures.GCSEmulator,
    mini: tuple[Catalog, Path],
    warehouse: CountingWarehouse,
    tmp_path: Path,
) -> None:
    catalog, _ = mini
    bucket = gcs_emulator.create_bucket()
    storage = open_storage(f"gs://{bucket}/checkpoints")
    # An upload a killed writer left in a chunk folder.
    dead = f"checkpoints/{PAIR}/agg_{PAIR}/.2024-01-30_2024-01-30.parquet.0123abcd.tmp"
    gcs_emulator.client().bucket(bucket).blob(dead).upload_from_string(b"partial")
    assert list(storage.temporaries(f"{PAIR}/agg_{PAIR}")) == [dead.removeprefix("checkpoints/")]
    refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    assert not list(storage.temporaries(f"{PAIR}/agg_{PAIR}"))
    out = _merge(catalog, storage, tmp_path / "gcs.parquet")
    inputs = pair_inputs(storage, catalog, PAIR, DateRange())
    assert all(isinstance(p, StoredFile) for p in inputs.spine)
    assert all(isinstance(p, StoredFile) for f in inputs.features for p in f.path)
    local = LocalStorage(tmp_path / "local")
    refresh_tables(warehouse, _sources(catalog), local, threads=2)
    _assert_same(out, _merge(catalog, local, tmp_path / "local.parquet"))


def test_a_table_that_disagrees_with_its_partitions_fails_by_name_and_keeps_the_rest(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    """Rows read for a day that differ from the day's partition count (the table changed while
    it was read) fail that table, naming it and the days; the other tables' chunks and the
    table's earlier chunks stay as they were."""
    catalog, _ = mini
    storage = LocalStorage(tmp_path / "ckpt")
    refresh_tables(warehouse, _sources(catalog), storage, threads=2)
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
    warehouse = CountingWarehouse(path)
    with pytest.raises(ExtractionError, match=rf"tmp_{PAIR}: days 2024-01-30\.\.2024-01-30 have"):
        refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    assert {k: storage.stat(k) for k in storage.list()} == before
    warehouse.close()


def test_a_live_writers_local_temporary_file_is_left_alone(
    catalog: Catalog, tmp_path: Path
) -> None:
    """The work folder can be shared by other runs on the machine: only files of writers that
    no longer run are cleared."""
    source = catalog.table(f"agg_{PAIR}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / f".{source.name}.2024-01-30_2024-01-30.{os.getpid()}-aa.tmp"
    gone = tmp_path / f".{source.name}.2024-01-30_2024-01-30.{dead.pid}-bb.tmp"
    for path in (live, gone):
        path.write_bytes(b"partial")
    assert clear_temporaries(LocalStorage(tmp_path / "root"), source, tmp_path) == 1
    assert live.exists() and not gone.exists()


def _recorded(inputs: PairInputs) -> list[tuple[object, ...]]:
    """What the merge takes from the chunks' manifests: each table's part ids and facts."""
    return [(inputs.spine_ids,), *((f.table, f.ids, f.facts) for f in inputs.features)]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_table_s_chunk_index_stands_in_for_its_manifests_while_they_are_unchanged(
    request: pytest.FixtureRequest,
    mini: tuple[Catalog, Path],
    warehouse: CountingWarehouse,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    catalog, _ = mini
    if where == "gcs":
        emulator: gcs_fixtures.GCSEmulator = request.getfixturevalue("gcs_emulator")
        storage = open_storage(f"gs://{emulator.create_bucket()}/checkpoints")
    else:
        storage = LocalStorage(tmp_path / "ckpt")
    sources = _sources(catalog)
    refresh_tables(warehouse, sources, storage, threads=2)
    first = pair_inputs(storage, catalog, PAIR, DateRange())
    index_keys = {chunk_index_key(owner_of(s), s.name) for s in sources}
    assert all(storage.stat(k) is not None for k in index_keys)
    stamps = {k: storage.stat(k) for k in index_keys}

    read: list[str] = []
    real_read = storage.read_bytes

    def counted(key: str) -> bytes | None:
        read.append(key)
        return real_read(key)

    monkeypatch.setattr(storage, "read_bytes", counted)
    # The merge's inputs: one read a table, its index; the same manifests as before.
    again = pair_inputs(storage, catalog, PAIR, DateRange())
    assert sorted(read) == sorted(index_keys)
    assert _recorded(again) == _recorded(first)
    # A refresh with nothing new reads no manifest either, and leaves every index as it was.
    read.clear()
    refresh_tables(warehouse, sources, storage, threads=2)
    assert sorted(read) == sorted(index_keys)
    assert {k: storage.stat(k) for k in index_keys} == stamps

    # A manifest rewritten since its table's index was written is read on its own, and what it
    # says now is what counts: here, that it has no facts (the merge then opens its chunk).
    table = catalog.tables_for(PAIR)[0].name
    manifest_key = next(k for k in storage.list(f"{PAIR}/{table}") if k.endswith(".manifest.json"))
    record = json.loads(real_read(manifest_key) or b"")
    storage.write_bytes(manifest_key, json.dumps({**record, "facts": None}).encode())
    read.clear()
    changed = pair_inputs(storage, catalog, PAIR, DateRange())
    assert sorted(read) == sorted([*index_keys, manifest_key])
    assert next(f for f in changed.features if f.table == table).facts == ()

    # An index that cannot be read is passed over: every manifest is read, with the same result;
    # the next refresh writes it again.
    storage.write_bytes(chunk_index_key(PAIR, table), b"{not json")
    read.clear()
    assert _recorded(pair_inputs(storage, catalog, PAIR, DateRange())) == _recorded(changed)
    manifests = [k for k in storage.list(f"{PAIR}/{table}") if k.endswith(".manifest.json")]
    assert set(manifests) <= set(read)
    refresh_tables(warehouse, sources, storage, threads=2)
    read.clear()
    pair_inputs(storage, catalog, PAIR, DateRange())
    assert sorted(read) == sorted(index_keys)
