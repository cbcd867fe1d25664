"""The incremental merge: a refresh copies the row groups whose inputs did not change from the
previous training file and writes the file a from-scratch merge writes."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import threading
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.checkpoints.window import ALL_TIME, TrainingWindow, resolve_window
from bqx_assets.core.errors import MergeError
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.merge import MergeReport, merge_checkpoints, pair_inputs
from bqx_assets.core.merge.reuse import ROW_GROUPS_KEY
from bqx_assets.core.storage import LocalFile, LocalStorage, open_storage
from bqx_assets.core.storage.gcs_sink import SEGMENTS_FOLDER
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.builders import correct_day, root_with_xattrs
from bqx_assets_tests.conftest import Warehouses
from bqx_assets_tests.core.merge.conftest import Appended, four_days
from bqx_assets_tests.core.merge.helpers import (
    DAY,
    PAIR,
    build,
    copy_tree,
    flip_byte,
    merge_pair,
    merge_to,
    refresh,
    same_file,
    temporaries,
)
from emulators.gcs import GCSEmulator


def _no_kernel_copy(*_args: object) -> int:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def test_a_first_build_encodes_every_row_group(appended: Appended) -> None:
    first = appended.first_report
    # January (2 days), February 1 to 2 (the week to the market's Friday close), and the week
    # from Sunday the 4th (the market's open).
    assert first.row_groups == 3
    assert (first.row_groups_reused, first.bytes_reused) == (0, 0)
    # From scratch every row group is encoded: every chunk holding spine keys is opened (not
    # one holding only days without spine rows, such as a weekend).
    assert 0 < first.chunks_opened <= first.chunks


# Copied row groups move by a copy in the kernel; where it cannot copy between the two files
# (another filesystem, an old kernel), by the merge's own reads and writes: the same file.
# A previous file whose root vouches for its bytes (`LocalFile(vouched=True)`) is copied unread.
@pytest.mark.parametrize("vouched", [False, True], ids=["checked", "vouched"])
@pytest.mark.parametrize("kernel_copy", [True, False], ids=["kernel copy", "no kernel copy"])
def test_an_appended_day_copies_the_unchanged_row_groups(
    appended: Appended,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kernel_copy: bool,
    vouched: bool,
) -> None:
    catalog = appended.catalog
    copies: list[tuple[int, int]] = []  # (source offset, destination offset) of kernel copies
    if not kernel_copy:
        monkeypatch.setattr(os, "copy_file_range", _no_kernel_copy)
    else:
        real = os.copy_file_range

        def recorded(src: int, dst: int, count: int, offset: int, to: int) -> int:
            copies.append((offset, to))
            return real(src, dst, count, offset, to)

        monkeypatch.setattr(os, "copy_file_range", recorded)

    refreshed = merge_pair(
        appended.storage(),
        catalog,
        tmp_path / "refreshed.parquet",
        previous=LocalFile(appended.first, vouched=vouched),
    )
    # January and February 1 to 2 are copied; the week with February 4 (its targets' look-ahead
    # tail took values) and the new day is encoded.
    assert (refreshed.row_groups, refreshed.row_groups_reused) == (3, 2)
    if kernel_copy and vouched:
        # Unread, as one span at the offsets it had, from the file's first byte: whole blocks
        # at the same place in both files, which XFS or btrfs can share instead of copying.
        assert copies and copies[0] == (0, 0)
        assert all(offset == to for offset, to in copies)
    elif kernel_copy:
        assert copies  # read and checked, then copied by the kernel
    # Planned from the chunks' recorded facts: only the chunks the encoded week reads (its
    # days) are opened, not those behind the copied row groups (January's).
    assert 0 < refreshed.chunks_opened < appended.first_report.chunks_opened
    meta = pq.read_metadata(appended.first)
    first_chunk = meta.row_group(2).column(0)  # where February 4 starts
    start = first_chunk.dictionary_page_offset or first_chunk.data_page_offset
    assert refreshed.bytes_reused == start - len(b"PAR1")
    assert appended.scratch_report.row_groups_reused == 0
    same_file(tmp_path / "refreshed.parquet", appended.scratch)
    assert refreshed.coverage == appended.scratch_report.coverage

    # Nothing changed since: all but the newest day's row group is copied, same file again.
    again = merge_pair(
        appended.storage(),
        catalog,
        tmp_path / "again.parquet",
        previous=LocalFile(tmp_path / "refreshed.parquet", vouched=vouched),
    )
    assert again.row_groups_reused == 2
    same_file(tmp_path / "again.parquet", appended.scratch)


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
    appended: Appended, warehouses: Warehouses, tmp_path: Path, day: date, reused: int
) -> None:
    catalog = appended.catalog
    path = four_days(warehouses, catalog, tmp_path / "w.duckdb")
    correct_day(path, catalog, f"agg_{PAIR}", day)
    ckpt = copy_tree(appended.before, tmp_path / "ckpt")  # as refreshed before the correction
    wh = EmbeddedWarehouse(path)
    try:
        after = build(wh, catalog, ckpt, tmp_path / "after.parquet", appended.first)
        build(wh, catalog, tmp_path / "scratch", tmp_path / "scratch.parquet")
    finally:
        wh.close()
    assert after.row_groups_reused == reused
    same_file(tmp_path / "after.parquet", tmp_path / "scratch.parquet")


def test_a_damaged_previous_file_is_an_error_naming_it_and_writes_nothing(
    appended: Appended, tmp_path: Path
) -> None:
    previous = Path(shutil.copyfile(appended.first, tmp_path / "first.parquet"))
    meta = pq.read_metadata(previous)
    flip_byte(previous, meta.row_group(0).column(5).data_page_offset + 10)
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the file published before")
    with pytest.raises(MergeError, match=r"previous training file .*first\.parquet.*row group 0"):
        merge_pair(appended.storage(), appended.catalog, out, previous=LocalFile(previous))
    assert out.read_bytes() == b"the file published before"
    assert temporaries(out.parent) == []


def test_a_published_file_is_copied_unread_while_its_checksum_record_holds(
    appended: Appended, tmp_path: Path
) -> None:
    """A local root vouches for its published file while the checksum recorded when it was
    published holds: a refresh copies its row groups unread. Once the file is written to, it
    is read and checked again, and damage is found."""
    out_root = LocalStorage(root_with_xattrs(tmp_path))
    key = training_file_key(PAIR)
    out_root.put_file(appended.first, key)
    previous = out_root.find_file(key)
    assert previous is not None and previous.vouched
    refreshed = merge_pair(
        appended.storage(), appended.catalog, tmp_path / "new.parquet", previous=previous
    )
    assert refreshed.row_groups_reused == 2
    same_file(tmp_path / "new.parquet", appended.scratch)

    meta = pq.read_metadata(previous.path)
    flip_byte(previous.path, meta.row_group(0).column(5).data_page_offset + 10)
    damaged = out_root.find_file(key)
    assert damaged is not None and not damaged.vouched  # its bytes are checked as copied
    with pytest.raises(MergeError, match=r"previous training file .* row group 0"):
        merge_pair(appended.storage(), appended.catalog, tmp_path / "again.parquet", damaged)
    assert not (tmp_path / "again.parquet").exists() and temporaries(tmp_path) == []


def test_a_bad_input_found_while_copying_ahead_stops_the_copy_and_writes_nothing(
    appended: Appended, tmp_path: Path
) -> None:
    """The unchanged row groups start copying before the inputs are checked; a table whose
    chunk turns out not to match the catalog fails the merge, naming the table, and the copy
    stops with nothing left behind."""
    storage = LocalStorage(copy_tree(appended.after, tmp_path / "ckpt"))
    inputs = pair_inputs(storage, appended.catalog, PAIR, ALL_TIME)
    # After the chunks were verified against their manifests: the table's newest chunk, which
    # the refresh encodes rows from, now has text where the catalog declares a number (and its
    # other chunks have numbers).
    table = next(t for t in inputs.tables if t.name == f"agg_{PAIR}")
    chunk = Path(table.chunks[-1].file.uri)
    data = pq.read_table(chunk)
    assert table.columns is not None
    column = table.columns[0][0]
    at = data.column_names.index(column)
    pq.write_table(data.set_column(at, column, data.column(at).cast("string")), chunk)
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the file published before")
    with pytest.raises(MergeError, match=rf"table agg_{PAIR} .* other columns or types"):
        merge_to(out, inputs.spine, inputs.tables, previous=LocalFile(appended.first))
    assert out.read_bytes() == b"the file published before"
    assert temporaries(out.parent) == []
    assert not [t for t in threading.enumerate() if t.name == "bqx-copy-ahead"]


@pytest.mark.parametrize("previous", ["missing", "not parquet", "other columns", "rewritten"])
def test_a_previous_file_that_cannot_be_used_is_not_used(
    appended: Appended, tmp_path: Path, previous: str
) -> None:
    first = Path(shutil.copyfile(appended.first, tmp_path / "first.parquet"))
    if previous == "missing":
        first.unlink()
    elif previous == "not parquet":
        first.write_bytes(b"x" * 100)
    elif previous == "other columns":
        table = pq.read_table(first)
        pq.write_table(table.drop_columns([table.column_names[-1]]), first)
    elif previous == "rewritten":
        # Another writer's file of the same columns carries the row groups' record over (in
        # its key-value metadata) but not the row groups it describes.
        table = pq.read_table(first)
        assert ROW_GROUPS_KEY.encode() in (table.schema.metadata or {})
        pq.write_table(table, first, row_group_size=1000)
    said: list[str] = []
    out = tmp_path / "out.parquet"
    report = merge_pair(
        appended.storage(),
        appended.catalog,
        out,
        previous=LocalFile(first),
        progress=said.append,
    )
    assert report.row_groups_reused == 0
    assert [line for line in said if "not reused" in line]
    same_file(out, appended.scratch)


def _stored_build(
    warehouse: EmbeddedWarehouse | None, appended: Appended, ckpt: str, output: str, key: str
) -> tuple[MergeReport, bytes]:
    """Refresh the pair's chunks into the GCS root `ckpt` (unless `warehouse` is None: as they
    are), merge them in place into the GCS root `output`, copying from the object published
    there, and publish."""
    if warehouse is not None:
        refresh(warehouse, appended.catalog, ckpt)
    storage = open_storage(ckpt)
    inputs = pair_inputs(storage, appended.catalog, PAIR, ALL_TIME)
    out_root = open_storage(output)
    report = merge_checkpoints(
        inputs.spine, inputs.tables, out_root.stage(key), previous=out_root.find_file(key)
    )
    out_root.publish_staged(report.staged, key)
    out_root.discard(report.staged)
    data = out_root.read_bytes(key)
    assert data is not None
    return report, data


@pytest.mark.emulator
def test_in_gcs_the_refresh_copies_row_groups_from_the_published_object(
    appended: Appended,
    warehouses: Warehouses,
    gcs_emulator: GCSEmulator,
    tmp_path: Path,
) -> None:
    bucket = gcs_emulator.create_bucket()
    key = training_file_key(PAIR)
    ckpt, out = f"gs://{bucket}/ckpt", f"gs://{bucket}/out"
    segments = f"{SEGMENTS_FOLDER}/{key}"

    def kept() -> list[tuple[int, str, int | None]]:
        """The segments kept beside the file: (size, CRC32C, generation), in no set order."""
        infos = open_storage(out).infos(segments).values()
        return sorted((i.size, i.crc32c, i.generation) for i in infos)

    wh = EmbeddedWarehouse(
        four_days(warehouses, appended.catalog, tmp_path / "w.duckdb"), read_only=False
    )
    try:
        first, data = _stored_build(wh, appended, ckpt, out, key)
        assert data == appended.first.read_bytes()
        # The object was composed from its magic and its three row groups, kept for the next
        # refresh (its footer was a segment of its own, deleted once composed).
        before = kept()
        assert len(before) == 1 + first.row_groups
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        record = json.loads(meta.metadata[ROW_GROUPS_KEY.encode()])
        assert {(g["end"] - g["start"], g["crc32c"]) for g in record["groups"]} <= {
            (size, crc) for size, crc, _ in before
        }

        wh.append(DAY)
        refreshed, data = _stored_build(wh, appended, ckpt, out, key)
        assert refreshed.row_groups_reused == 2
        assert data == appended.scratch.read_bytes()
        # The magic and the two unchanged row groups are the same objects (the same
        # generations): composed in place, not sent again; the week's old segment went, its
        # new one is kept.
        after = kept()
        assert len(after) == 1 + refreshed.row_groups
        assert len(set(before) & set(after)) == 1 + refreshed.row_groups_reused

        # Segments gone (a lifecycle rule, say): the row groups are read and sent again, and
        # the file is the same.
        for name in open_storage(out).list(segments):
            open_storage(out).delete(name)
        again, data = _stored_build(None, appended, ckpt, out, key)
    finally:
        wh.close()
    assert again.row_groups_reused == 2
    assert data == appended.scratch.read_bytes()
    assert len(kept()) == 1 + again.row_groups


def test_a_rolling_window_moves_the_unchanged_row_groups(
    appended: Appended, warehouses: Warehouses, tmp_path: Path
) -> None:
    catalog = appended.catalog
    days = TrainingWindow(days=4)
    wh = EmbeddedWarehouse(four_days(warehouses, catalog, tmp_path / "w.duckdb"), read_only=False)

    def built(root: str, out: str, previous: Path | None = None) -> MergeReport:
        window = resolve_window(wh, [catalog.targets[PAIR]], days)
        return build(wh, catalog, tmp_path / root, tmp_path / out, previous, window)

    try:
        # January 31, February 1-2 and 4: January's day, the week to Saturday the 3rd, and
        # Sunday the 4th.
        assert built("ckpt", "first.parquet").row_groups == 3
        wh.append(DAY)
        # February 1-2, 4-5: January's day drops out, the week of February 1-2 moves to the
        # front (copied, its offsets moved), the week from the 4th holds the new day (encoded).
        moved = built("ckpt", "moved.parquet", previous=tmp_path / "first.parquet")
        assert (moved.row_groups, moved.row_groups_reused) == (2, 1)
        assert built("scratch", "scratch.parquet").row_groups_reused == 0
    finally:
        wh.close()
    same_file(tmp_path / "moved.parquet", tmp_path / "scratch.parquet")
