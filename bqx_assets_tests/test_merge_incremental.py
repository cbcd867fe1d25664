"""The incremental merge: a refresh copies the row groups whose inputs did not change from the
previous training file and writes the file a from-scratch merge writes."""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bqx_assets.core import merge as merge_module
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.chunks import (
    TrainingWindow,
    pair_inputs,
    refresh_tables,
    resolve_window,
)
from bqx_assets.core.errors import MergeError
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.merge.join import ROW_GROUPS_KEY, MergeReport, VouchedFile, row_groups
from bqx_assets.core.publish import published_file
from bqx_assets.core.storage import LocalStorage, Storage, open_storage
from bqx_assets.core.storage.gcs import SEGMENTS_FOLDER
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from bqx_assets_tests.emulators import gcs as gcs_fixtures
from bqx_assets_tests.test_refresh import _correct_day, _sources
from bqx_assets_tests.test_storage import _root_with_xattrs

gcs_emulator = gcs_fixtures.gcs_emulator

PAIR = "eurusd"
START = datetime(2024, 1, 30, tzinfo=UTC)  # a Tuesday: two days of January, then February
DAY = 1440


def _us(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1_000_000


def test_row_groups_are_months_then_the_newest_months_weeks() -> None:
    minute = 60_000_000
    dec = np.arange(_us(2023, 12, 30), _us(2024, 1, 1), minute)
    jan = np.arange(_us(2024, 1, 1), _us(2024, 2, 1), minute)
    feb = np.arange(_us(2024, 2, 1), _us(2024, 2, 12, 12), minute)
    keys = np.concatenate([dec, jan, feb])
    groups = row_groups(keys)
    # December and January whole (closed months), then February's weeks from Sunday: the 1st to
    # Saturday the 3rd, Sunday the 4th to the 10th, and the 11th to the 12th at noon.
    assert [b - a for a, b in groups] == [2 * DAY, 31 * DAY, 3 * DAY, 7 * DAY, DAY + DAY // 2]
    assert groups[0][0] == 0 and groups[-1][1] == len(keys)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(groups))
    # A cap cuts them further; a spine inside one week is one row group.
    assert [b - a for a, b in row_groups(keys, 2000)][:3] == [2000, 880, 2000]
    assert row_groups(feb[:10]) == [(0, 10)]


@pytest.fixture(scope="module")
def four_days(tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path]) -> Path:
    catalog, _ = mini
    path = tmp_path_factory.mktemp("incremental") / "w.duckdb"
    create_warehouse(path, catalog, pairs=[PAIR], rows=4 * DAY, start=START).close()
    return path


@pytest.fixture
def warehouse(four_days: Path, tmp_path: Path) -> EmbeddedWarehouse:
    path = tmp_path / "w.duckdb"
    path.write_bytes(four_days.read_bytes())
    wh = EmbeddedWarehouse(path, read_only=False)
    yield wh
    wh.close()


def _build(
    warehouse: EmbeddedWarehouse,
    catalog: Catalog,
    root: Path | str,
    out: Path,
    previous: Path | VouchedFile | None = None,
    window: TrainingWindow | None = None,
) -> MergeReport:
    """Refresh the pair's chunks into `root` (for `window`, resolved from the warehouse now,
    or all time), then merge them into `out`, copying from `previous`."""
    storage = open_storage(str(root))
    resolved = resolve_window(warehouse, [catalog.targets[PAIR]], window) if window else DateRange()
    refresh_tables(warehouse, _sources(catalog), storage, window=resolved, threads=2)
    inputs = pair_inputs(storage, catalog, PAIR, resolved)
    return inputs.merge(out, previous=previous)


def _same_file(a: Path, b: Path) -> None:
    """Equal as data and as bytes: same row groups, same column chunks, same footer."""
    left, right = pq.read_table(a), pq.read_table(b)
    assert left.column_names == right.column_names
    for name in left.column_names:
        assert left.column(name).equals(right.column(name)), name
    assert a.read_bytes() == b.read_bytes()


def _no_kernel_copy(*_args: object) -> int:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


# Copied row groups move by a copy in the kernel; where it cannot copy between the two files
# (another filesystem, an old kernel), by the merge's own reads and writes: the same file.
# A previous file whose storage vouches for its bytes (`VouchedFile`) is copied unread.
@pytest.mark.parametrize("vouched", [False, True], ids=["checked", "vouched"])
@pytest.mark.parametrize("kernel_copy", [True, False], ids=["kernel copy", "no kernel copy"])
def test_an_appended_day_copies_the_unchanged_row_groups(
    mini: tuple[Catalog, Path],
    warehouse: EmbeddedWarehouse,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kernel_copy: bool,
    vouched: bool,
) -> None:
    catalog, _ = mini
    copies: list[tuple[int, int]] = []  # (source offset, destination offset) of kernel copies
    if not kernel_copy:
        monkeypatch.setattr(os, "copy_file_range", _no_kernel_copy)
    else:
        real = os.copy_file_range

        def recorded(src: int, dst: int, count: int, offset: int, to: int) -> int:
            copies.append((offset, to))
            return real(src, dst, count, offset, to)

        monkeypatch.setattr(os, "copy_file_range", recorded)

    def previous(path: Path) -> Path | VouchedFile:
        return VouchedFile(path) if vouched else path

    first = _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "first.parquet")
    # January (2 days), February 1 to 2 (the week to the market's Friday close), and the week
    # from Sunday the 4th (the market's open).
    assert first.row_groups == 3
    assert first.reused_row_groups == 0
    # From scratch every row group is encoded: every chunk holding spine keys is opened (not
    # one holding only days without spine rows, such as a weekend).
    assert 0 < first.parts_opened <= first.parts

    warehouse.append(DAY)  # Monday, February 5
    refreshed = _build(
        warehouse,
        catalog,
        tmp_path / "ckpt",
        tmp_path / "refreshed.parquet",
        previous=previous(tmp_path / "first.parquet"),
    )
    # January and February 1 to 2 are copied; the week with February 4 (its targets' look-ahead
    # tail took values) and the new day is encoded.
    assert (refreshed.row_groups, refreshed.reused_row_groups) == (3, 2)
    if kernel_copy and vouched:
        # Unread, as one span at the offsets it had, from the file's first byte: whole blocks
        # at the same place in both files, which XFS or btrfs can share instead of copying.
        assert copies and copies[0] == (0, 0)
        assert all(offset == to for offset, to in copies)
    # Planned from the chunks' recorded facts: only the chunks the encoded week reads (its
    # days) are opened, not those behind the copied row groups (January's).
    assert 0 < refreshed.parts_opened < first.parts_opened
    meta = pq.read_metadata(tmp_path / "first.parquet")
    first_chunk = meta.row_group(2).column(0)  # where February 4 starts
    start = first_chunk.dictionary_page_offset or first_chunk.data_page_offset
    assert refreshed.reused_bytes == start - len(b"PAR1")
    scratch = _build(warehouse, catalog, tmp_path / "scratch", tmp_path / "scratch.parquet")
    assert scratch.reused_row_groups == 0
    _same_file(tmp_path / "refreshed.parquet", tmp_path / "scratch.parquet")
    assert refreshed.coverage == scratch.coverage

    # Nothing changed since: all but the newest day's row group is copied, same file again.
    again = _build(
        warehouse,
        catalog,
        tmp_path / "ckpt",
        tmp_path / "again.parquet",
        previous=previous(tmp_path / "refreshed.parquet"),
    )
    assert again.reused_row_groups == 2
    _same_file(tmp_path / "again.parquet", tmp_path / "scratch.parquet")


@pytest.mark.parametrize(
    ("day", "reused"),
    [
        # January is encoded again and February 1-2 moved to where it now falls.
        (date(2024, 1, 30), 1),
        # January copied where it was; February 1-2 encoded again.
        (date(2024, 2, 1), 1),
    ],
)
def test_a_corrected_day_rebuilds_only_its_row_group(
    mini: tuple[Catalog, Path], four_days: Path, tmp_path: Path, day: date, reused: int
) -> None:
    catalog, _ = mini
    path = tmp_path / "w.duckdb"
    path.write_bytes(four_days.read_bytes())
    wh = EmbeddedWarehouse(path)
    _build(wh, catalog, tmp_path / "ckpt", tmp_path / "first.parquet")
    wh.close()
    _correct_day(path, catalog, f"agg_{PAIR}", day)
    wh = EmbeddedWarehouse(path)
    after = _build(
        wh, catalog, tmp_path / "ckpt", tmp_path / "after.parquet", tmp_path / "first.parquet"
    )
    _build(wh, catalog, tmp_path / "scratch", tmp_path / "scratch.parquet")
    wh.close()
    assert after.reused_row_groups == reused
    _same_file(tmp_path / "after.parquet", tmp_path / "scratch.parquet")


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_previous_file_is_an_error_naming_it_and_writes_nothing(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "first.parquet")
    meta = pq.read_metadata(tmp_path / "first.parquet")
    _flip_byte(tmp_path / "first.parquet", meta.row_group(0).column(5).data_page_offset + 10)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"the file published before")
    with pytest.raises(MergeError, match=r"previous training file .*first\.parquet.*row group 0"):
        _build(warehouse, catalog, tmp_path / "ckpt", out, previous=tmp_path / "first.parquet")
    assert out.read_bytes() == b"the file published before"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_published_file_is_copied_unread_while_its_checksum_record_holds(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    """A local root vouches for its published file while the checksum recorded when it was
    published holds: a refresh copies its row groups unread. Once the file is written to, it
    is read and checked again, and damage is found."""
    catalog, _ = mini
    out_root = LocalStorage(_root_with_xattrs(tmp_path))
    _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "first.parquet")
    out_root.put_file(tmp_path / "first.parquet", training_file_key(PAIR), move=True)
    previous = published_file(out_root, PAIR)
    assert isinstance(previous, VouchedFile)
    warehouse.append(DAY)
    refreshed = _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "new.parquet", previous)
    assert refreshed.reused_row_groups == 2
    _build(warehouse, catalog, tmp_path / "scratch", tmp_path / "scratch.parquet")
    _same_file(tmp_path / "new.parquet", tmp_path / "scratch.parquet")

    published = previous.path
    meta = pq.read_metadata(published)
    _flip_byte(published, meta.row_group(0).column(5).data_page_offset + 10)
    damaged = published_file(out_root, PAIR)
    assert damaged == published  # a plain path: its bytes are checked as they are copied
    with pytest.raises(MergeError, match=r"previous training file .* row group 0"):
        _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "again.parquet", damaged)


def _built_then_refreshed(
    warehouse: EmbeddedWarehouse, catalog: Catalog, tmp_path: Path
) -> tuple[Path, Storage]:
    """The pair built into `tmp_path / "ckpt"` and `first.parquet`, a day appended and its
    chunks refreshed (not merged): the training file and the checkpoint root."""
    first = tmp_path / "first.parquet"
    _build(warehouse, catalog, tmp_path / "ckpt", first)
    warehouse.append(DAY)
    storage = open_storage(str(tmp_path / "ckpt"))
    refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    return first, storage


def test_a_bad_input_found_while_copying_ahead_stops_the_copy_and_writes_nothing(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    """The unchanged row groups start copying before the inputs are checked; a table whose
    chunk turns out not to match the catalog fails the merge, naming the table, and the copy
    stops with nothing left behind."""
    catalog, _ = mini
    first, storage = _built_then_refreshed(warehouse, catalog, tmp_path)
    inputs = pair_inputs(storage, catalog, PAIR, DateRange())
    # After the chunks were verified against their manifests: the table's newest chunk, which
    # the refresh encodes rows from, now has text where the catalog declares a number (and its
    # other chunks have numbers).
    source = next(s for s in inputs.features if s.table == f"agg_{PAIR}")
    chunk = source.path[-1]
    table = pq.read_table(chunk)
    column = source.columns[0][0]
    at = table.column_names.index(column)
    pq.write_table(table.set_column(at, column, table.column(at).cast("string")), chunk)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"the file published before")
    with pytest.raises(MergeError, match=rf"table agg_{PAIR} .* other columns or types"):
        inputs.merge(out, previous=first)
    assert out.read_bytes() == b"the file published before"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert not [t for t in threading.enumerate() if t.name == "bqx-copy-ahead"]


def _rewrite_manifests(root: Path, pattern: str, change: Callable[[dict], None]) -> list[Path]:
    """Apply `change` to the JSON of the chunk manifests matching `pattern` under `root`."""
    paths = sorted(root.glob(f"**/{pattern}.manifest.json"))
    for path in paths:
        record = json.loads(path.read_bytes())
        change(record)
        path.write_text(json.dumps(record))
    return paths


def test_chunks_without_recorded_facts_are_opened_and_give_the_same_file(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    """Manifests written before chunks' facts were recorded: the merge opens every chunk and
    reads its key column, as before, and writes the same file."""
    catalog, _ = mini
    first = tmp_path / "first.parquet"
    _build(warehouse, catalog, tmp_path / "ckpt", first)
    warehouse.append(DAY)
    planned = _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "planned.parquet", first)
    assert planned.parts_opened < planned.parts
    assert _rewrite_manifests(tmp_path / "ckpt", "*", lambda m: m.pop("facts"))
    opened = _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "opened.parquet", first)
    assert opened.parts_opened == opened.parts == planned.parts
    assert opened.reused_row_groups == planned.reused_row_groups > 0
    _same_file(tmp_path / "opened.parquet", tmp_path / "planned.parquet")
    assert opened.coverage == planned.coverage


def test_chunks_opened_beyond_the_kept_footers_are_read_again_into_the_same_file(
    mini: tuple[Catalog, Path],
    warehouse: EmbeddedWarehouse,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge that opens more local chunks than it keeps footers of reads each footer again
    for its pieces, and writes the same file as one that keeps them all."""
    catalog, _ = mini
    first = tmp_path / "first.parquet"
    _build(warehouse, catalog, tmp_path / "ckpt", first)
    warehouse.append(DAY)
    kept = _build(warehouse, catalog, tmp_path / "ckpt", tmp_path / "kept.parquet", first)
    footers_read = 0
    real = pq.ParquetFile

    def counted(source: object, **kwargs: object) -> pq.ParquetFile:
        nonlocal footers_read
        footers_read += kwargs.get("metadata") is None
        return real(source, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counted)
    inputs = pair_inputs(LocalStorage(tmp_path / "ckpt"), catalog, PAIR, DateRange())
    report = inputs.merge(tmp_path / "again.parquet", previous=first)
    keeping, footers_read = footers_read, 0
    monkeypatch.setattr(merge_module, "KEPT_FOOTERS", 0)
    rereading = inputs.merge(tmp_path / "reread.parquet", previous=first)
    assert report.parts_opened == rereading.parts_opened == kept.parts_opened > 0
    # Each opened part's footer is read once more, by its pieces, when it is not kept.
    assert footers_read - keeping == rereading.parts_opened
    _same_file(tmp_path / "reread.parquet", tmp_path / "kept.parquet")
    _same_file(tmp_path / "again.parquet", tmp_path / "kept.parquet")


def test_a_chunk_unlike_its_recorded_facts_is_an_error_naming_it(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    """The facts of a chunk the merge reads rows from are checked against the chunk when it
    is opened: a chunk whose row groups are not those its manifest records fails the merge,
    naming the table and the chunk, and nothing is written."""
    catalog, _ = mini
    first, storage = _built_then_refreshed(warehouse, catalog, tmp_path)

    def split_rows(manifest: dict) -> None:
        rows = manifest["facts"]["rows"]
        manifest["facts"]["rows"] = [rows[0] - 1, 1, *rows[1:]]

    newest = _rewrite_manifests(tmp_path / "ckpt", f"agg_{PAIR}/*", lambda _: None)[-1]
    _rewrite_manifests(newest.parent, newest.name.removesuffix(".manifest.json"), split_rows)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"the file published before")
    chunk = newest.name.removesuffix(".manifest.json") + ".parquet"
    with pytest.raises(MergeError, match=rf"table agg_{PAIR} .*{chunk} has row groups of"):
        pair_inputs(storage, catalog, PAIR, DateRange()).merge(out, previous=first)
    assert out.read_bytes() == b"the file published before"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("previous", ["missing", "not parquet", "other columns"])
def test_a_previous_file_that_cannot_be_used_is_not_used(
    mini: tuple[Catalog, Path],
    warehouse: EmbeddedWarehouse,
    tmp_path: Path,
    previous: str,
) -> None:
    catalog, _ = mini
    first = tmp_path / "first.parquet"
    _build(warehouse, catalog, tmp_path / "ckpt", first)
    if previous == "missing":
        first.unlink()
    elif previous == "not parquet":
        first.write_bytes(b"x" * 100)
    else:
        table = pq.read_table(first)
        pq.write_table(table.drop_columns([table.column_names[-1]]), first)
    out = tmp_path / "out.parquet"
    report = _build(warehouse, catalog, tmp_path / "ckpt", out, previous=first)
    assert report.reused_row_groups == 0
    _build(warehouse, catalog, tmp_path / "scratch", tmp_path / "scratch.parquet")
    _same_file(out, tmp_path / "scratch.parquet")


def _stored_build(
    warehouse: EmbeddedWarehouse,
    catalog: Catalog,
    ckpt: str,
    output: str,
    key: str,
    previous: bool,
) -> tuple[MergeReport, bytes]:
    storage = open_storage(ckpt)
    refresh_tables(warehouse, _sources(catalog), storage, threads=2)
    inputs = pair_inputs(storage, catalog, PAIR, DateRange())
    out_root = open_storage(output)
    before = published_file(out_root, PAIR) if previous else None
    report = inputs.merge(out_root.stage(key), previous=before)
    assert report.staged is not None
    out_root.publish_staged(report.staged, key)
    out_root.discard(report.staged)
    data = out_root.read_bytes(key)
    assert data is not None
    return report, data


def test_in_gcs_the_refresh_copies_row_groups_from_the_published_object(
    mini: tuple[Catalog, Path],
    warehouse: EmbeddedWarehouse,
    gcs_emulator: gcs_fixtures.GCSEmulator,
    tmp_path: Path,
) -> None:
    catalog, _ = mini
    bucket = gcs_emulator.create_bucket()
    key = training_file_key(PAIR)
    ckpt, out = f"gs://{bucket}/ckpt", f"gs://{bucket}/out"
    segments = f"{SEGMENTS_FOLDER}/{key}"

    def kept() -> list[tuple[int, str, int | None]]:
        """The segments kept beside the file: (size, CRC32C, generation), in no set order."""
        infos = open_storage(out).infos(segments).values()
        return sorted((i.size, i.crc32c, i.generation) for i in infos)

    first, _ = _stored_build(warehouse, catalog, ckpt, out, key, previous=True)
    # The object was composed from its magic and its three row groups, kept for the next
    # refresh (its footer was a part of its own, deleted once composed).
    before = kept()
    assert len(before) == 1 + first.row_groups
    meta = pq.ParquetFile(io.BytesIO(open_storage(out).read_bytes(key) or b"")).metadata
    record = json.loads(meta.metadata[ROW_GROUPS_KEY.encode()])
    assert {(g["end"] - g["start"], g["crc32c"]) for g in record["groups"]} <= {
        (size, crc) for size, crc, _ in before
    }

    warehouse.append(DAY)
    refreshed, data = _stored_build(warehouse, catalog, ckpt, out, key, previous=True)
    assert refreshed.reused_row_groups == 2
    local = _build(warehouse, catalog, tmp_path / "scratch", tmp_path / "scratch.parquet")
    assert local.reused_row_groups == 0
    (tmp_path / "refreshed.parquet").write_bytes(data)
    _same_file(tmp_path / "refreshed.parquet", tmp_path / "scratch.parquet")
    # The magic and the two unchanged row groups are the same objects (the same generations):
    # composed in place, not sent again; the week's old segment went, its new one is kept.
    after = kept()
    assert len(after) == 1 + refreshed.row_groups
    assert len(set(before) & set(after)) == 1 + refreshed.reused_row_groups

    # Segments gone (a lifecycle rule, say): the row groups are read and sent again, and the
    # file is the same.
    for name in open_storage(out).list(segments):
        open_storage(out).delete(name)
    again, data = _stored_build(warehouse, catalog, ckpt, out, key, previous=True)
    assert again.reused_row_groups == 2
    (tmp_path / "again.parquet").write_bytes(data)
    _same_file(tmp_path / "again.parquet", tmp_path / "scratch.parquet")
    assert len(kept()) == 1 + again.row_groups


def test_a_dagster_refresh_copies_row_groups_from_the_published_file(
    mini: tuple[Catalog, Path], four_days: Path, tmp_path: Path
) -> None:
    import dagster as dg

    from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
    from bqx_assets_tests.test_assets import resources

    _, catalog_path = mini
    path = tmp_path / "w.duckdb"
    path.write_bytes(four_days.read_bytes())
    res = resources(tmp_path, catalog_path, path)
    instance = dg.DagsterInstance.ephemeral()

    def build() -> dict[str, object]:
        assert dg.materialize([shared_checkpoints], resources=res, instance=instance).success
        run = dg.materialize(
            [pair_checkpoints, training_file], partition_key=PAIR, resources=res, instance=instance
        )
        assert run.success
        (done,) = run.asset_materializations_for_node("training_file")
        return {k: v.value for k, v in done.metadata.items()}

    first = build()
    assert (first["row_groups"], first["row_groups_reused"]) == (3, 0)
    writer = EmbeddedWarehouse(path, read_only=False)
    writer.append(DAY)
    writer.close()
    refreshed = build()
    assert (refreshed["row_groups"], refreshed["row_groups_reused"]) == (3, 2)
    assert 0 < int(refreshed["bytes_reused"]) < int(refreshed["bytes"])
    # Planned from the chunks' facts: the chunks behind the copied row groups are not opened.
    assert 0 < int(refreshed["chunks_opened"]) < int(first["chunks_opened"])
    assert int(first["chunks_opened"]) <= int(first["chunks"])
    assert refreshed["gate"] == "passed"
    published = pq.read_metadata(tmp_path / "out" / training_file_key(PAIR))
    assert (published.num_rows, published.num_row_groups) == (5 * DAY, 3)


def test_a_rolling_window_moves_the_unchanged_row_groups(
    mini: tuple[Catalog, Path], warehouse: EmbeddedWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    window = TrainingWindow(days=4)

    def build(root: str, out: Path, previous: Path | None = None) -> MergeReport:
        return _build(warehouse, catalog, tmp_path / root, out, previous, window)

    # January 31, February 1-2 and 4: January's day, the week to Saturday the 3rd, Sunday the 4th.
    assert build("ckpt", tmp_path / "first.parquet").row_groups == 3
    warehouse.append(DAY)
    # February 1-2, 4-5: January's day drops out, the week of February 1-2 moves to the front
    # (copied, its offsets moved), the week from the 4th holds the new day (encoded).
    moved = build("ckpt", tmp_path / "moved.parquet", previous=tmp_path / "first.parquet")
    assert (moved.row_groups, moved.reused_row_groups) == (2, 1)
    assert build("scratch", tmp_path / "scratch.parquet").reused_row_groups == 0
    _same_file(tmp_path / "moved.parquet", tmp_path / "scratch.parquet")
