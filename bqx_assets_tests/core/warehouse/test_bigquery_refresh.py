"""The refresh that production runs (`refresh_checkpoints` / `refresh_tables`, then the merge) on
BigQueryWarehouse, against the local-bigquery emulator: chunks equal to the source, only changed
days read again, faults retried, a killed refresh resumed, export mode, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog, Column
from bqx_assets.core.checkpoints.manifest import MANIFEST_SUFFIX, stored_manifests
from bqx_assets.core.checkpoints.refresh import (
    CheckpointStep,
    ChunkedCheckpoint,
    refresh_checkpoints,
    refresh_table,
    refresh_tables,
)
from bqx_assets.core.checkpoints.schema import Source, expected_schema, owner_of
from bqx_assets.core.checkpoints.select import require_chunks
from bqx_assets.core.checkpoints.window import ALL_TIME, TrainingWindow
from bqx_assets.core.errors import ExtractionError, WarehouseError
from bqx_assets.core.layout import ARROW_TYPES, KEY, KEY_TYPE, PAIR_COLUMN
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange, PartitionState
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.core.warehouse.conftest import (
    PAIR,
    BigQueryMini,
    RecordingWarehouse,
    assert_same_file,
    merged_file,
    open_warehouse,
    pair_sources,
    relocated,
    window_rows,
)
from emulators.bigquery import BigQueryEmulator, load_tables
from emulators.bigquery_limits import PartitionsAnswer
from emulators.proxy import HttpAnswerProxy, HttpFaultProxy, TcpFaultProxy

pytestmark = pytest.mark.emulator

WINDOW = TrainingWindow(
    datetime(2024, 1, 26, 19, 0, tzinfo=UTC), datetime(2024, 1, 30, 12, 0, tzinfo=UTC)
)
"""Friday 19:00 (inside ETF hours) to Tuesday noon: both end days cut, a weekend inside."""
RANGE = DateRange(WINDOW.start, WINDOW.end)
STAGING = "gs://bqx-ml-staging/exports"


def _chunk_rows(storage: LocalStorage, done: ChunkedCheckpoint) -> pa.Table:
    """A table's checkpoint rows: its chunk files, in order, as one table."""
    owner = owner_of(done.source)
    parts = []
    for chunk in done.chunks:
        path = storage.local_path(chunk.key(owner))
        assert path is not None
        parts.append(pq.read_table(path))
    return pa.concat_tables(parts)


def _assert_chunks_match_the_source(
    bq_mini: BigQueryMini, storage: LocalStorage, done: Sequence[ChunkedCheckpoint]
) -> None:
    """Each table's chunks hold its rows in the window, sorted, its catalog columns without
    `pair`; each chunk exactly its days' rows inside the window."""
    for table in done:
        source = table.source
        names = expected_schema(source).names
        data = _chunk_rows(storage, table)
        assert PAIR_COLUMN not in data.column_names
        expected = bq_mini.expected(source.name, names, RANGE).cast(data.schema)
        assert data.equals(expected), source.name
        days = sorted({str(p) for p in _days(bq_mini.rows[source.name], RANGE)})
        assert [c.manifest.first for c in table.chunks] == days, source.name
        for chunk in table.chunks:
            m = chunk.manifest
            inside = window_rows(bq_mini.rows[source.name], [KEY], m.range.window)
            assert m.rows == inside.num_rows, (source.name, m.first)
            if m.range.whole:
                assert m.rows == sum(int(v[0]) for v in m.partitions.values()), m.first


def _days(data: pa.Table, window: DateRange) -> set[object]:
    keys = window_rows(data, [KEY], window)[KEY]
    return set(pc.unique(pc.cast(keys, pa.date32())).to_pylist())


def _statuses(done: Sequence[ChunkedCheckpoint]) -> dict[str, list[tuple[str, str]]]:
    return {t.source.name: [(c.manifest.first, c.status) for c in t.chunks] for t in done}


@dataclasses.dataclass
class Step:
    """The pair's checkpoint step for WINDOW in read mode, run once for the module: its chunks
    (shared read-only by the tests that compare with them) and the reads it made."""

    storage: LocalStorage
    done: CheckpointStep
    reads: list[tuple[str, DateRange, int]]


@pytest.fixture(scope="module")
def step(bq_mini: BigQueryMini, tmp_path_factory: pytest.TempPathFactory) -> Step:
    wh = bq_mini.warehouse(RecordingWarehouse)
    assert isinstance(wh, RecordingWarehouse)
    root = tmp_path_factory.mktemp("bigquery-step")
    storage = LocalStorage(root / "checkpoints")
    try:
        done = refresh_checkpoints(
            wh, storage, bq_mini.sources(), [bq_mini.catalog.targets[PAIR]], WINDOW,
            f"pair {PAIR}", threads=4, workdir=root / "work",
        )  # fmt: skip
    finally:
        wh.close()
    return Step(storage, done, list(wh.reads))


# -- the production path -------------------------------------------------------------------------
def test_a_checkpoint_step_on_bigquery_makes_the_chunks_and_file_of_the_embedded_warehouse(
    bq_mini: BigQueryMini, step: Step, mini: tuple[Catalog, Path], tmp_path: Path
) -> None:
    """The pair's checkpoint step (`refresh_checkpoints`, as the assets run it) on BigQuery: day
    partitions from INFORMATION_SCHEMA, one Storage Read session per table restricted to its run
    of chunks, chunks equal to the source's rows in the window; the training file merged from
    them equals the one the embedded warehouse's chunks of the same rows make. A second step
    reads nothing."""
    sources = bq_mini.sources()
    assert step.done.window.training == RANGE
    assert [c.source for c in step.done.checkpoints] == sources
    for table in step.done.checkpoints:
        assert {(c.status, c.manifest.method) for c in table.chunks} == {("extracted", "read")}
        assert table.bytes_read > 0
    _assert_chunks_match_the_source(bq_mini, step.storage, step.done.checkpoints)
    # One read per table, restricted to its chunks' span: the window, cut to its days.
    assert sorted(name for name, _, _ in step.reads) == sorted(s.name for s in sources)
    for name, window, rows in step.reads:
        done = next(t for t in step.done.checkpoints if t.source.name == name)
        first, last = done.chunks[0].manifest.range, done.chunks[-1].manifest.range
        assert (window, rows) == (DateRange(first.start, last.end), done.rows), name

    catalog, _ = mini
    reference = LocalStorage(tmp_path / "embedded")
    embedded = EmbeddedWarehouse(bq_mini.embedded)
    try:
        refresh_checkpoints(embedded, reference, pair_sources(catalog), [catalog.targets[PAIR]],
                            WINDOW, f"pair {PAIR}", threads=2)  # fmt: skip
    finally:
        embedded.close()
    window = step.done.window
    training = merged_file(step.storage, bq_mini.catalog, window, tmp_path / "bq.parquet")
    assert training.num_rows == 180 + 120 + 1440 + 720  # the spine's minutes in the window
    assert_same_file(
        training, merged_file(reference, catalog, window, tmp_path / "embedded.parquet")
    )

    wh = bq_mini.warehouse(RecordingWarehouse)
    assert isinstance(wh, RecordingWarehouse)
    try:
        again = refresh_checkpoints(wh, step.storage, sources, [bq_mini.catalog.targets[PAIR]],
                                    WINDOW, f"pair {PAIR}")  # fmt: skip
    finally:
        wh.close()
    assert {c.status for t in again.checkpoints for c in t.chunks} == {"reused"}
    assert wh.reads == [] and again.bytes_read == 0


@pytest.fixture
def changing(bq_mini: BigQueryMini) -> tuple[Catalog, BigQueryEmulator, dict[str, pa.Table]]:
    """Four of eurusd's tables in datasets of their own, to change: targets, agg (to grow by a
    day), div_bqx (to gain minutes in a past day) and the shared mkt_sentiment (unchanged; its
    rows run into February, so its January is a month chunk)."""
    emulator = bq_mini.emulator
    features, targets = emulator.dataset("changing"), emulator.dataset("changing_targets")
    kept = ("agg_eurusd", "div_bqx_eurusd", "mkt_sentiment")
    pair = relocated(bq_mini.catalog, features, targets).subset([PAIR])
    catalog = Catalog(
        pair.project, features, targets, pair.pairs,
        {n: t for n, t in pair.tables.items() if n in kept}, pair.targets,
    )  # fmt: skip
    client = emulator.client()
    load_tables(client, features, {n: bq_mini.rows[n] for n in kept})
    load_tables(client, targets, {"targets_eurusd": bq_mini.rows["targets_eurusd"]})
    return catalog, emulator, bq_mini.rows


def test_a_changed_table_is_read_again_only_for_its_changed_days(
    changing: tuple[Catalog, BigQueryEmulator, dict[str, pa.Table]], tmp_path: Path
) -> None:
    """After a first refresh, minutes are added to a past day of one table and a new day
    (Thursday 1 February) to two others: the refresh reads those days only, joins the two
    tables' January days into a month chunk from the checkpoints (January closed for them),
    reuses the rest, and gives the training file a from-scratch refresh gives. (The emulator
    has no per-day last_modified_time: a day is seen to change by its rows, as here.)"""
    catalog, emulator, loaded = changing
    sources = pair_sources(catalog)
    wh = open_warehouse(emulator, catalog.features_dataset, catalog.targets_dataset,
                        RecordingWarehouse)  # fmt: skip
    assert isinstance(wh, RecordingWarehouse)
    storage = LocalStorage(tmp_path / "checkpoints")
    try:
        first = refresh_tables(wh, sources, storage, threads=2)
        january = ["2024-01-26", "2024-01-28", "2024-01-29", "2024-01-30", "2024-01-31"]
        assert _statuses(first)["agg_eurusd"] == [(d, "extracted") for d in january]
        assert _statuses(first)["mkt_sentiment"] == [
            ("2024-01-01", "extracted"), ("2024-02-01", "extracted"),
        ]  # fmt: skip

        client = emulator.client()
        # Ten minutes on Sunday before the open, in div_bqx only.
        div = catalog.table("div_bqx_eurusd")
        rows = loaded[div.name].slice(0, 10)
        sunday = datetime(2024, 1, 28, 21, 50, tzinfo=UTC)
        early = pa.array([sunday + timedelta(minutes=i) for i in range(10)], KEY_TYPE)
        load_tables(client, catalog.features_dataset, {div.name: rows.set_column(0, KEY, early)})
        # Thursday: Wednesday's rows a day later, in the targets and agg.
        one_day = pa.scalar(timedelta(days=1), pa.duration("us"))
        wednesday = DateRange(datetime(2024, 1, 31, tzinfo=UTC), None)
        for dataset, name in (
            (catalog.targets_dataset, "targets_eurusd"),
            (catalog.features_dataset, "agg_eurusd"),
        ):
            last = window_rows(loaded[name], loaded[name].column_names, wednesday)
            thursday = pc.add(last[KEY], one_day).cast(KEY_TYPE)
            load_tables(client, dataset, {name: last.set_column(0, KEY, thursday)})

        wh.reads.clear()
        again = refresh_tables(wh, sources, storage, threads=2)
        grown = [("2024-01-01", "compacted"), ("2024-02-01", "extracted")]
        assert _statuses(again) == {
            "targets_eurusd": grown,
            "agg_eurusd": grown,
            "div_bqx_eurusd": [
                (d, "extracted" if d == "2024-01-28" else "reused") for d in january
            ],
            "mkt_sentiment": [("2024-01-01", "reused"), ("2024-02-01", "reused")],
        }
        day = timedelta(days=1)
        feb1, jan28 = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 1, 28, tzinfo=UTC)
        assert sorted((n, w) for n, w, _ in wh.reads) == [
            ("agg_eurusd", DateRange(feb1, feb1 + day)),
            ("div_bqx_eurusd", DateRange(jan28, jan28 + day)),
            ("targets_eurusd", DateRange(feb1, feb1 + day)),
        ]
        div_chunks = next(t for t in again if t.source.name == div.name)
        assert div_chunks.chunks[1].manifest.rows == 130
        assert div_chunks.rows == sum(t.rows for t in first if t.source.name == div.name) + 10
        # The January day chunks of the grown tables are gone, replaced by the month chunk.
        for name in ("targets_eurusd", "agg_eurusd"):
            source = next(s for s in sources if s.name == name)
            stored = stored_manifests(storage, source).manifests.values()
            assert sorted(m.first for m in stored) == ["2024-01-01", "2024-02-01"], name

        scratch = LocalStorage(tmp_path / "scratch")
        fresh = refresh_tables(wh, sources, scratch, threads=2)
        for a, b in zip(again, fresh, strict=True):
            assert [(c.manifest.first, c.manifest.rows, c.manifest.crc32c) for c in a.chunks] == [
                (c.manifest.first, c.manifest.rows, c.manifest.crc32c) for c in b.chunks
            ], a.source.name
        refreshed = merged_file(storage, catalog, ALL_TIME, tmp_path / "refreshed.parquet")
        assert refreshed.num_rows == 4680 + 1440
        assert_same_file(
            refreshed, merged_file(scratch, catalog, ALL_TIME, tmp_path / "scratch.parquet")
        )
    finally:
        wh.close()


def test_transient_faults_during_a_refresh_are_retried(
    bq_mini: BigQueryMini, step: Step, tmp_path: Path
) -> None:
    """503s on the REST API (the partitions query) and dropped gRPC connections (reads) during
    a refresh: retried, and the chunks are those of a refresh without faults."""
    emulator = bq_mini.emulator
    with (
        HttpFaultProxy(emulator.rest_endpoint, faults=3) as rest,
        TcpFaultProxy(emulator.grpc_endpoint, drops=2) as grpc_proxy,
    ):
        faulty = bq_mini.warehouse(api_endpoint=rest.endpoint, read_endpoint=grpc_proxy.endpoint)
        try:
            storage = LocalStorage(tmp_path)
            done = refresh_tables(faulty, bq_mini.sources(), storage, window=RANGE, threads=2)
            assert rest.faults_injected == 3 and rest.forwarded >= 1
            assert grpc_proxy.faults_injected == 2 and grpc_proxy.forwarded >= 1
            # Every injected fault cost at least one retry.
            assert faulty.retries >= 5
        finally:
            faulty.close()
    assert _crc32cs(done) == _crc32cs(step.done.checkpoints)


def _crc32cs(done: Iterable[ChunkedCheckpoint]) -> dict[str, list[tuple[str, str]]]:
    return {t.source.name: [(c.manifest.first, c.manifest.crc32c) for c in t.chunks] for t in done}


_REFRESH_SCRIPT = """
import json, sys, time
from datetime import datetime

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse

args = json.loads(sys.argv[1])


class Paced(BigQueryWarehouse):
    def read(self, *a, **k):
        time.sleep(args["pause_s"])  # so that the kill lands mid-way through the tables
        return super().read(*a, **k)


wh = Paced(args["project"], args["features"], args["targets"],
           api_endpoint=args["rest"], read_endpoint=args["grpc"])
catalog = Catalog.from_dict(args["catalog"])
sources = [catalog.table(name) for name in args["tables"]]
window = DateRange(datetime.fromisoformat(args["start"]), datetime.fromisoformat(args["end"]))
refresh_tables(wh, sources, LocalStorage(args["root"]), window=window, threads=1,
               workdir=args["work"])
print("refreshed", len(sources))
"""


def test_a_refresh_killed_mid_way_resumes_without_redoing_finished_chunks(
    bq_mini: BigQueryMini, step: Step, tmp_path: Path
) -> None:
    """A real refresh process (of six of the pair's tables) killed with SIGKILL mid-way; the
    re-run reads only the chunks without a current manifest, leaves the others' manifests
    untouched, clears the dead writer's temporary files, and every chunk equals an
    uninterrupted run's."""
    root, work = tmp_path / "killed", tmp_path / "work"
    script = tmp_path / "refresh.py"
    script.write_text(_REFRESH_SCRIPT)
    emulator = bq_mini.emulator
    sources = bq_mini.catalog.tables_for(PAIR)[:6]
    args = {
        "project": emulator.project,
        "features": bq_mini.features,
        "targets": bq_mini.targets,
        "rest": emulator.rest_endpoint,
        "grpc": emulator.grpc_endpoint,
        "catalog": bq_mini.catalog.to_dict(),
        "tables": [s.name for s in sources],
        "start": RANGE.start.isoformat(),  # type: ignore[union-attr]
        "end": RANGE.end.isoformat(),  # type: ignore[union-attr]
        "root": str(root),
        "work": str(work),
        "pause_s": 0.15,
    }
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while len(list(root.rglob(f"*{MANIFEST_SUFFIX}"))) < 6:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert time.monotonic() < deadline, "the refresh made no progress"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL

    storage = LocalStorage(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob(f"*{MANIFEST_SUFFIX}")}
    kept = {str(p.relative_to(root)).removesuffix(MANIFEST_SUFFIX) + ".parquet" for p in before}
    wh = bq_mini.warehouse(RecordingWarehouse)
    assert isinstance(wh, RecordingWarehouse)
    try:
        resumed = refresh_tables(wh, sources, storage, window=RANGE, threads=2, workdir=work)
    finally:
        wh.close()
    every = {c.key(owner_of(t.source)) for t in resumed for c in t.chunks}
    assert 6 <= len(kept) < len(every)
    extracted = {c.key(owner_of(t.source)) for t in resumed for c in t.chunks
                 if c.status == "extracted"}  # fmt: skip
    assert extracted == every - kept
    # Only the tables with chunks to redo were read.
    assert {name for name, _, _ in wh.reads} == {
        t.source.name for t in resumed if t.count("extracted")
    }
    assert {p: p.stat().st_mtime_ns for p in before} == before  # kept manifests untouched
    assert not list(root.rglob("*.tmp")) and not list(work.rglob("*.tmp"))
    require_chunks(storage, sources, RANGE, f"pair {PAIR}")
    uninterrupted = _crc32cs(t for t in step.done.checkpoints if t.source in sources)
    assert _crc32cs(resumed) == uninterrupted
    _assert_chunks_match_the_source(bq_mini, storage, resumed)


def test_export_mode_chunks_equal_read_mode_chunks(
    bq_mini: BigQueryMini, step: Step, tmp_path: Path
) -> None:
    """`mode="export"`: a table's chunks to redo are cut from one extract job of the whole table
    (the window too: the export holds every row, the chunks only the window's); their
    manifests say "export" and bill no bytes, and the rows, the chunks and the training file
    equal a read-mode refresh's. The shards are deleted. Chunks made either way are current
    for the other mode.

    What the emulator cannot show: that an extract job is not billed (bytes_read 0 is this
    code's statement of BigQuery's pricing, not a measured bill); a real export's sharding and
    time at production size; and GCS itself (the emulator's extract files are read back from
    its local folder)."""
    sources = bq_mini.sources()
    wh = bq_mini.warehouse(RecordingWarehouse)
    assert isinstance(wh, RecordingWarehouse)
    try:
        exported = LocalStorage(tmp_path / "export")
        by_export = refresh_tables(wh, sources, exported, window=RANGE, threads=2,
                                   mode="export", staging_uri=STAGING)  # fmt: skip
        assert wh.reads == []  # every table's rows came from its export
        by_read = step.done.checkpoints
        for made, other in zip(by_export, by_read, strict=True):
            assert {c.manifest.method for c in made.chunks} == {"export"}
            assert {c.manifest.method for c in other.chunks} == {"read"}
            assert made.bytes_read == 0 < other.bytes_read
            assert [
                (c.manifest.first, c.manifest.rows, c.manifest.crc32c) for c in made.chunks
            ] == [(c.manifest.first, c.manifest.rows, c.manifest.crc32c) for c in other.chunks], (
                made.source.name
            )
        staging = bq_mini.emulator.gcs_path(STAGING)
        assert not staging.exists() or not list(staging.rglob("*.parquet"))  # shards deleted
        assert_same_file(
            merged_file(exported, bq_mini.catalog, RANGE, tmp_path / "export.parquet"),
            merged_file(step.storage, bq_mini.catalog, RANGE, tmp_path / "read.parquet"),
        )
        # Either mode's chunks are current for the other: nothing is exported or read again.
        again = refresh_tables(wh, sources, step.storage, window=RANGE, mode="export",
                               staging_uri=STAGING)  # fmt: skip
        assert {c.status for t in again for c in t.chunks} == {"reused"}
        again = refresh_tables(wh, sources, exported, window=RANGE)
        assert {c.status for t in again for c in t.chunks} == {"reused"}
        assert wh.reads == []
    finally:
        wh.close()
    assert not staging.exists() or not list(staging.rglob("*.parquet"))


# -- bad inputs ----------------------------------------------------------------------------------
def _files(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def _missing(bq_mini: BigQueryMini) -> Source:
    """A catalog table the warehouse does not have."""
    return dataclasses.replace(Catalog.load().table("agg_bqx_gbpusd"), dataset=bq_mini.features)


def test_a_missing_table_fails_naming_it_and_the_others_are_kept(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse, tmp_path: Path
) -> None:
    missing = _missing(bq_mini)
    present = bq_mini.catalog.table("mkt_sentiment")
    storage = LocalStorage(tmp_path)
    with pytest.raises(
        ExtractionError,
        match=rf"1 of 2 tables failed, the other chunks are kept: agg_bqx_gbpusd: "
        rf"{bq_mini.features}\.agg_bqx_gbpusd: not found in the warehouse",
    ):
        refresh_tables(bq_warehouse, [present, missing], storage, window=RANGE,
                       mode="export", staging_uri=STAGING)  # fmt: skip
    require_chunks(storage, [present], RANGE, "kept")
    assert not storage.infos(f"{owner_of(missing)}/{missing.name}")


def test_tables_the_partitions_view_cannot_describe_fail_alone_and_the_others_are_extracted(
    bq_mini: BigQueryMini, tmp_path: Path
) -> None:
    """BigQuery's PARTITIONS view answered (by the proxy) for three tables as it has them for a
    table not partitioned, one with rows whose key is NULL, one with rows in the streaming
    buffer: each fails naming it and why, in one ExtractionError; every other table of the
    pair is extracted, its chunks equal to the source."""
    odd = {
        "mkt_sentiment": [(None, 5)],
        "csi_agg_eur": [("20240129", 1440), ("__NULL__", 7)],
        "agg_eurusd": [("20240129", 1440), ("__UNPARTITIONED__", 12)],
    }
    sources = bq_mini.sources()
    names = [s.name for s in sources]
    assert set(odd) <= set(names) and len(names) > len(odd)
    storage = LocalStorage(tmp_path)
    with HttpAnswerProxy(bq_mini.emulator.rest_endpoint, after=[PartitionsAnswer(odd)]) as proxy:
        wh = bq_mini.warehouse(api_endpoint=proxy.endpoint)
        try:
            with pytest.raises(ExtractionError) as err:
                refresh_tables(wh, sources, storage, window=RANGE, threads=2,
                               workdir=tmp_path / "work")  # fmt: skip
        finally:
            wh.close()
    message = str(err.value)
    f = bq_mini.features
    assert message.startswith(f"3 of {len(names)} tables failed, the other chunks are kept")
    for name, why in (
        ("mkt_sentiment", "not partitioned (partition_id NULL)"),
        ("csi_agg_eur", f"7 rows with a NULL {KEY} (partition __NULL__)"),
        ("agg_eurusd", "12 rows in the streaming buffer (partition __UNPARTITIONED__)"),
    ):
        assert f"{name}: {f}.{name}: {why}; a refresh by day" in message, message
        assert not storage.infos(f"{owner_of(bq_mini.catalog.table(name))}/{name}")
    others = [s for s in sources if s.name not in odd]
    found = require_chunks(storage, others, RANGE, "others")
    assert sorted(found) == sorted(s.name for s in others)


def test_a_table_gone_after_its_partitions_were_listed_fails_naming_it(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse, tmp_path: Path
) -> None:
    """The read (or the extract job) itself fails naming the table when the partition look-up
    did not, and nothing is written for it."""
    missing = _missing(bq_mini)
    days = [PartitionState(date(2024, 1, 29), 10, "2024-01-29T00:00:00+00:00")]
    storage = LocalStorage(tmp_path)
    for mode in ("read", "export"):
        with pytest.raises(WarehouseError, match=rf"{bq_mini.features}\.agg_bqx_gbpusd"):
            refresh_table(bq_warehouse, missing, storage, days, mode=mode,  # type: ignore[arg-type]
                          staging_uri=STAGING, workdir=tmp_path / "work")  # fmt: skip
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_bad_mode_or_export_without_staging_fails_before_reading(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse, tmp_path: Path
) -> None:
    source = bq_mini.catalog.table("mkt_sentiment")
    days = [PartitionState(date(2024, 1, 29), 1440, "2024-01-29T00:00:00+00:00")]
    storage = LocalStorage(tmp_path / "checkpoints")
    with pytest.raises(ExtractionError, match=r"mkt_sentiment: export mode needs a staging URI"):
        refresh_table(bq_warehouse, source, storage, days, mode="export")
    with pytest.raises(ExtractionError, match=r"extraction mode 'copy' is not one of read, export"):
        refresh_table(bq_warehouse, source, storage, days, mode="copy")  # type: ignore[arg-type]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_catalog_column_the_table_lacks_fails_naming_both_and_keeps_the_chunks(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse, step: Step, tmp_path: Path
) -> None:
    """Schema drift (the catalog lists a column the warehouse table no longer has): the refresh
    fails naming the table and the column, and the chunks stored before stay as they were."""
    source = bq_mini.catalog.table("agg_eurusd")
    folder = f"{owner_of(source)}/{source.name}"
    shutil.copytree(step.storage.root / folder, tmp_path / folder)
    storage = LocalStorage(tmp_path)
    before = _files(tmp_path)
    drifted = dataclasses.replace(
        source, columns=(*source.columns, Column("agg_new_45", "FLOAT64"))
    )
    with pytest.raises(
        ExtractionError, match=r"1 of 1 tables failed.*agg_eurusd: no column\(s\) agg_new_45"
    ):
        refresh_tables(bq_warehouse, [drifted], storage, window=RANGE)
    assert _files(tmp_path) == before
    require_chunks(storage, [source], RANGE, "kept")


# -- throughput ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_throughput_against_native_export(
    bigquery_emulator: BigQueryEmulator, tmp_path: Path
) -> None:
    """Closing figure: MB/s of Storage Read into sorted Arrow, and of the whole refresh (partition
    look-up, read, conform, chunks and manifests), against the emulator's own parquet export
    (an extract job) of the same tables. `BQX_THROUGHPUT_ROWS` rows a table (default 150,000:
    two read streams), best of `BQX_THROUGHPUT_ROUNDS` (default 3)."""
    rows = int(os.environ.get("BQX_THROUGHPUT_ROWS", "150000"))
    catalog = Catalog.load()
    dataset = bigquery_emulator.dataset("throughput")
    tri_reg = next(t for t in catalog.tables.values() if t.name.startswith("tri_reg_"))
    names = ("agg_bqx_eurusd", "reg_eurusd", tri_reg.name, "cov_agg_audusd_eurusd", "tmp_eurusd")
    sources: list[Source] = [dataclasses.replace(catalog.table(n), dataset=dataset) for n in names]
    start = np.datetime64("2024-01-01T00:00", "us")
    tables = {}
    for source in sources:
        rng = np.random.default_rng(zlib.crc32(source.name.encode()))
        cols = {KEY: pa.array(start + np.arange(rows) * 60_000_000).cast(KEY_TYPE)}
        for c in source.columns:
            if c.dtype == "STRING":
                cols[c.name] = pa.array(["x"] * rows)
            elif c.dtype == "FLOAT64":
                cols[c.name] = pa.array(rng.normal(0, 0.087, rows))
            else:
                cols[c.name] = pa.array(rng.integers(0, 2, rows)).cast(ARROW_TYPES[c.dtype])
        tables[source.name] = pa.table(cols)
    load_tables(bigquery_emulator.client(), dataset, tables)
    megabytes = sum(t.nbytes for t in tables.values()) / 1e6
    wh = bigquery_emulator.warehouse(dataset, dataset, max_read_streams=4)

    # Best of a few interleaved rounds: on a shared machine a single timing is mostly noise.
    read_s = refresh_s = export_s = float("inf")
    for round_ in range(int(os.environ.get("BQX_THROUGHPUT_ROUNDS", "3"))):
        started = time.perf_counter()
        for source in sources:
            wh.read(dataset, source.name, tables[source.name].column_names, DateRange())
        read_s = min(read_s, time.perf_counter() - started)
        started = time.perf_counter()
        refresh_tables(wh, sources, LocalStorage(tmp_path / f"round{round_}"), threads=4)
        refresh_s = min(refresh_s, time.perf_counter() - started)
        started = time.perf_counter()
        for source in sources:
            uri = f"gs://bench/{dataset}/{round_}/{source.name}-*.parquet"
            wh.export(dataset, source.name, uri)
        export_s = min(export_s, time.perf_counter() - started)
    wh.close()
    print(
        f"\nBigQuery emulator, {len(sources)} tables x {rows:,} rows, {megabytes:.1f} MB Arrow:"
        f"\n  Storage Read to sorted Arrow {megabytes / read_s:7.1f} MB/s ({read_s:.2f} s)"
        f"\n  refresh to chunks            {megabytes / refresh_s:7.1f} MB/s ({refresh_s:.2f} s)"
        f"\n  native parquet export        {megabytes / export_s:7.1f} MB/s ({export_s:.2f} s)"
        f"\n  refresh / export             {export_s / refresh_s:7.2f}x"
    )
