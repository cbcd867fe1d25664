"""`merge_checkpoints`: left-join semantics, keys, dtypes, the file written, bad inputs, and
chunks read in place from GCS with the output streamed there."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import InputTable, merge_checkpoints
from bqx_assets.core.publish import TrainingFile, publish_training_file
from bqx_assets.core.storage import LocalStorage, StoredFile, file_crc32c
from bqx_assets.core.storage.gcs import GCSStorage
from bqx_assets.core.storage.gcs_sink import SEGMENTS_FOLDER
from bqx_assets_tests.core.merge.helpers import (
    START,
    TARGETS,
    feature,
    merge_to,
    minutes,
    spine_of,
    table_of,
    temporaries,
    write,
)
from emulators.gcs import GCSEmulator


@pytest.fixture
def spine(tmp_path: Path) -> Path:
    """Ten spine rows, not in key order, with columns the merge must leave out."""
    order = [3, 0, 1, 2, 9, 8, 4, 5, 6, 7]
    return write(
        tmp_path / "targets.parquet",
        {
            KEY: minutes(order),
            "pair": ["eurusd"] * 10,
            "bqx_45": [0.5] * 10,
            "target_a": [float(m) for m in order],
            "target_b": [None if m == 9 else -float(m) for m in order],
        },
    )


def spine_minutes(spine: Path) -> list[int]:
    keys = pq.read_table(spine, columns=[KEY]).column(0).to_pylist()
    return [int((k - START).total_seconds() // 60) for k in keys]


def merge(spine: Path, tables: Sequence[InputTable], out: Path, **kwargs: object) -> pl.DataFrame:
    merge_to(out, spine_of(spine), tables, **kwargs)
    return pl.read_parquet(out)


def naive(spine: Path, tables: Sequence[InputTable]) -> pl.DataFrame:
    """The first team's iterative Polars left join, the reference for contents."""
    frame = pl.read_parquet(spine, columns=[KEY, *TARGETS])
    for t in tables:
        table = pl.read_parquet(str(t.chunks[0].file))
        table = table.rename({c: f"{t.name}__{c}" for c in table.columns if c != KEY})
        frame = frame.join(table, on=KEY, how="left", maintain_order="left")
    return frame


# -- rows -------------------------------------------------------------------------------------
def test_rows_are_the_spine_rows_in_spine_order(tmp_path: Path, spine: Path) -> None:
    shuffled = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    out = merge(spine, [table_of("f", feature(tmp_path, "f", shuffled))], tmp_path / "out.parquet")
    order = spine_minutes(spine)
    assert out.height == 10
    assert out[KEY].to_list() == [START + timedelta(minutes=m) for m in order]
    assert out["f__x"].to_list() == [10.0 * m for m in order]
    assert out["target_a"].to_list() == [float(m) for m in order]


def test_extra_keys_are_dropped_and_missing_keys_are_null(tmp_path: Path, spine: Path) -> None:
    keys = [-5, -1, 0, 2, 4, 6, 8, 11, 500]  # odd spine minutes missing, some keys outside it
    out = merge(spine, [table_of("f", feature(tmp_path, "f", keys))], tmp_path / "out.parquet")
    order = spine_minutes(spine)
    assert out.height == 10
    assert out["f__x"].to_list() == [10.0 * m if m % 2 == 0 else None for m in order]
    assert out["f__n"].to_list() == [m if m % 2 == 0 else None for m in order]


def test_a_table_with_no_spine_keys_gives_null_columns(tmp_path: Path, spine: Path) -> None:
    out = merge(
        spine, [table_of("f", feature(tmp_path, "f", [100, 101, 102]))], tmp_path / "out.parquet"
    )
    assert out.height == 10
    assert out["f__x"].null_count() == 10
    assert out.schema["f__x"] == pl.Float64 and out.schema["f__n"] == pl.Int64


def test_a_table_of_several_chunks_is_joined_as_one(tmp_path: Path, spine: Path) -> None:
    """A table's chunks, each a file of its own days, join as the one table they make."""
    a = feature(tmp_path, "a", [7, 2, 9, -1, 3])  # not in key order, a key outside the spine
    b = feature(tmp_path, "b", [0, 5, 100])
    out = merge(spine, [table_of("f", a, b)], tmp_path / "out.parquet")
    present = {7, 2, 9, 3, 0, 5}
    assert out["f__x"].to_list() == [
        10.0 * m if m in present else None for m in spine_minutes(spine)
    ]


def test_duplicate_keys_in_a_feature_table_are_an_error(tmp_path: Path, spine: Path) -> None:
    path = feature(tmp_path, "corr_etf_idx_eurusd_spy", [0, 1, 2, 2, 3, 5, 5, 5, 6])
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    with pytest.raises(MergeError) as info:
        merge_to(out, spine_of(spine), [table_of("corr_etf_idx_eurusd_spy", path)])
    message = str(info.value)
    assert "corr_etf_idx_eurusd_spy" in message and str(path) in message
    assert "2024-03-04T00:02:00" in message and "2024-03-04T00:05:00" in message
    assert list(out.parent.iterdir()) == []  # nothing written, no temporary left


def test_duplicate_keys_in_the_spine_are_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.parquet",
        {KEY: minutes([0, 1, 1]), "target_a": [1.0, 2.0, 3.0], "target_b": [1.0, 2.0, 3.0]},
    )
    with pytest.raises(MergeError, match=r"targets\.parquet.*duplicate.*2024-03-04T00:01:00"):
        merge_to(tmp_path / "out.parquet", spine_of(path), [])
    assert not (tmp_path / "out.parquet").exists()


def test_a_spine_of_several_chunks_is_read_in_their_order(tmp_path: Path) -> None:
    """The spine's chunks (a rolling window's days) make one spine, in chunk order; a key in
    two of them is an error naming the chunk."""
    first = write(
        tmp_path / "day1.parquet",
        {KEY: minutes([0, 1]), "target_a": [0.0, 1.0], "target_b": [0.0, -1.0]},
    )
    second = write(
        tmp_path / "day2.parquet",
        {KEY: minutes([2, 3]), "target_a": [2.0, 3.0], "target_b": [-2.0, -3.0]},
    )
    columns = tuple((t, t) for t in TARGETS)
    spine = InputTable.of_files("targets", first, second, columns=columns)
    f = table_of("f", feature(tmp_path, "f", [3, 0]))
    report = merge_to(tmp_path / "out.parquet", spine, [f])
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert report.rows == 4
    assert out["target_a"].to_list() == [0.0, 1.0, 2.0, 3.0]
    assert out["f__x"].to_list() == [0.0, None, None, 30.0]

    again = write(
        tmp_path / "day3.parquet",
        {KEY: minutes([3]), "target_a": [3.0], "target_b": [-3.0]},
    )
    twice = InputTable.of_files("targets", first, second, again, columns=columns)
    with pytest.raises(MergeError, match=r"targets .*duplicate .*2024-03-04T00:03:00"):
        merge_to(tmp_path / "twice.parquet", twice, [f])
    assert not (tmp_path / "twice.parquet").exists()


# -- columns ----------------------------------------------------------------------------------
def test_columns_are_key_then_spine_columns_then_features_in_order(
    tmp_path: Path, spine: Path
) -> None:
    b = table_of("b", feature(tmp_path, "b", range(10)), columns=(("n", "b__n"), ("x", "b__x")))
    a = table_of("a", feature(tmp_path, "a", range(10)))
    merge_to(tmp_path / "out.parquet", spine_of(spine, ["target_b", "target_a"]), [b, a])
    names = pq.read_schema(tmp_path / "out.parquet").names
    assert names == [KEY, "target_b", "target_a", "b__n", "b__x", "a__x", "a__n"]


# -- keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("unit", "tz"),
    [("ns", "UTC"), ("ms", "UTC"), ("s", "UTC"), ("us", None), ("ns", "America/New_York")],
)
def test_keys_of_any_unit_and_zone_are_normalised(
    tmp_path: Path, spine: Path, unit: str, tz: str | None
) -> None:
    keys = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    path = write(
        tmp_path / "f.parquet", {KEY: minutes(keys, unit, tz), "x": [10.0 * k for k in keys]}
    )
    out = merge(spine, [table_of("f", path)], tmp_path / "out.parquet")
    assert pq.read_schema(tmp_path / "out.parquet").field(KEY).type == pa.timestamp("us", tz="UTC")
    assert out["f__x"].to_list() == [10.0 * m for m in spine_minutes(spine)]  # no 1970 keys
    assert {k.year for k in out[KEY].to_list()} == {2024}


def test_a_nanosecond_spine_is_written_as_microseconds_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.parquet",
        {KEY: minutes([0, 1, 2], "ns"), "target_a": [1.0, 2.0, 3.0], "target_b": [0.0, 0.0, 0.0]},
    )
    out = merge(path, [table_of("f", feature(tmp_path, "f", [0, 1, 2]))], tmp_path / "out.parquet")
    assert out[KEY].to_list() == [START + timedelta(minutes=m) for m in (0, 1, 2)]
    assert out["f__x"].to_list() == [0.0, 10.0, 20.0]


@pytest.mark.parametrize("row_group_size", [1, 3, 1000])
def test_unsorted_feature_files_of_any_row_group_size(
    tmp_path: Path, spine: Path, row_group_size: int
) -> None:
    keys = [9, 3, 14, 0, 7, -2, 1, 8, 5]
    f = table_of("f", feature(tmp_path, "f", keys, row_group_size=row_group_size))
    for rows in (None, 3):
        out = merge(spine, [f], tmp_path / "out.parquet", row_group_rows=rows)
        expected = [10.0 * m if m in keys else None for m in spine_minutes(spine)]
        assert out["f__x"].to_list() == expected


# -- dtypes and the file written --------------------------------------------------------------
def typed(tmp_path: Path, keys: Sequence[int], *, string: pa.DataType | None = None) -> Path:
    n = len(keys)
    return write(
        tmp_path / "typed.parquet",
        {
            KEY: minutes(keys),
            "f": pa.array([k + 0.25 for k in keys], pa.float64()),
            "i": pa.array([2**40 + k for k in keys], pa.int64()),
            "b": pa.array([k % 2 == 0 for k in keys], pa.bool_()),
            "s": pa.array(["eurusd"] * n, string or pa.string()),
        },
    )


DTYPES = {"f": "FLOAT64", "i": "INT64", "b": "BOOL", "s": "STRING"}


@pytest.mark.parametrize("string", [pa.string(), pa.large_string()])
def test_dtypes_are_kept(tmp_path: Path, spine: Path, string: pa.DataType) -> None:
    t = table_of("t", typed(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7], string=string), dtypes=DTYPES)
    merge_to(tmp_path / "out.parquet", spine_of(spine), [t])
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert [schema.field(f"t__{c}").type for c in "fibs"] == [
        pa.float64(),
        pa.int64(),
        pa.bool_(),
        pa.string(),
    ]
    out = pl.read_parquet(tmp_path / "out.parquet")
    order = spine_minutes(spine)
    assert out["t__i"].to_list() == [2**40 + m if m < 8 else None for m in order]
    assert out["t__b"].to_list() == [m % 2 == 0 if m < 8 else None for m in order]
    assert out["t__s"].to_list() == ["eurusd" if m < 8 else None for m in order]


def test_output_is_deterministic(tmp_path: Path, spine: Path) -> None:
    tables = [
        table_of("t", typed(tmp_path, range(10)), dtypes=DTYPES),
        table_of("f", feature(tmp_path, "f", [5, 1, 3])),
    ]
    merge_to(tmp_path / "one.parquet", spine_of(spine), tables)
    merge_to(tmp_path / "two.parquet", spine_of(spine), tables)
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()


def test_footer_has_row_groups_and_null_counts(tmp_path: Path, spine: Path) -> None:
    f = table_of("f", feature(tmp_path, "f", [0, 2, 4, 6, 8]))
    out = tmp_path / "out.parquet"
    report = merge_to(out, spine_of(spine), [f], row_group_rows=4)
    meta = pq.read_metadata(out)
    assert (report.rows, report.columns, report.row_groups) == (10, 5, 3)
    assert (meta.num_rows, meta.num_columns, meta.num_row_groups) == (10, 5, 3)
    assert report.bytes_written == report.staged.info.size == out.stat().st_size
    assert report.staged.info.crc32c == file_crc32c(out)
    names = pq.read_schema(out).names
    frame = pl.read_parquet(out)
    for column in ("f__x", "target_b"):
        i = names.index(column)
        nulls = sum(meta.row_group(g).column(i).statistics.null_count for g in range(3))
        assert nulls == frame[column].null_count()


def test_a_row_group_size_that_is_not_positive_is_an_error(tmp_path: Path, spine: Path) -> None:
    f = table_of("f", feature(tmp_path, "f", [0, 2]))
    with pytest.raises(MergeError, match="row_group_rows must be positive, got -1"):
        merge_to(tmp_path / "out.parquet", spine_of(spine), [f], row_group_rows=-1)
    assert temporaries(tmp_path) == []


# -- the naive join as reference ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("row_group_rows", "piece_bytes"), [(None, None), (1, None), (4, None), (7, None), (None, 1)]
)
def test_output_equals_the_naive_polars_join(
    tmp_path: Path,
    spine: Path,
    monkeypatch: pytest.MonkeyPatch,
    row_group_rows: int | None,
    piece_bytes: int | None,
) -> None:
    if piece_bytes:  # one column per piece: every table is cut and stitched back
        monkeypatch.setattr("bqx_assets.core.merge.pieces.PIECE_BYTES", piece_bytes)
    rng = np.random.default_rng(3)
    tables = []
    for t in range(6):
        keys = rng.choice(np.arange(-3, 14), size=int(rng.integers(1, 15)), replace=False)
        columns: dict = {KEY: minutes(keys)}
        for c in range(int(rng.integers(1, 5))):
            values = rng.standard_normal(len(keys))
            columns[f"c{c}"] = pa.array(values, mask=rng.random(len(keys)) < 0.3)
        columns["flag"] = pa.array(rng.random(len(keys)) < 0.5)
        columns["label"] = pa.array([f"l{k % 3}" for k in keys])
        path = write(tmp_path / f"t{t}.parquet", columns, row_group_size=int(rng.integers(1, 6)))
        tables.append(table_of(f"t{t}", path))
    ours = merge(spine, tables, tmp_path / "out.parquet", row_group_rows=row_group_rows)
    reference = naive(spine, tables)
    assert ours.columns == reference.columns
    for name in reference.columns:
        assert ours[name].equals(reference[name], check_names=True), name


# -- bad input --------------------------------------------------------------------------------
def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 4
    end = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[start:end] = b"\xff" * (end - start)  # footer intact, every page unreadable
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing key", "has no interval_time column"),
        ("not parquet", "not a readable parquet file"),
        ("truncated", "not a readable parquet file"),
        ("corrupt pages", "not a readable parquet file"),
        ("empty", "has no rows"),
        ("wrong dtype", r"other columns or types than the catalog declares: x is double, "
                        "expected INT64"),
        ("missing expected column", r"other columns or types .*: y is missing"),
        ("missing column", r"missing columns \['y'\]"),
        ("unsupported type", r"unsupported expected types \['NUMERIC'\]"),
        ("no file", "does not exist"),
        ("key not a timestamp", "key column interval_time has type int64"),
        ("no chunks", "has no chunks"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error_and_out_is_untouched(
    tmp_path: Path, spine: Path, case: str, expected: str
) -> None:
    good = table_of("good", feature(tmp_path, "good", range(10)))
    path = feature(tmp_path, "bad_table", range(10))
    table = table_of("bad_table", path)
    if case == "missing key":
        write(path, {"x": [1.0]})
    elif case == "not parquet":
        path.write_text("this is not parquet")
    elif case == "truncated":
        truncated(path)
    elif case == "corrupt pages":
        corrupt_pages(path)
    elif case == "empty":
        write(path, {KEY: minutes([]), "x": pa.array([], pa.float64())})
    elif case == "wrong dtype":
        table = table_of("bad_table", path, dtypes={"x": "INT64"})
    elif case == "missing expected column":
        table = table_of("bad_table", path, dtypes={"x": "FLOAT64", "y": "FLOAT64"})
    elif case == "missing column":
        table = table_of("bad_table", path, columns=(("x", "bad__x"), ("y", "bad__y")))
    elif case == "unsupported type":
        table = table_of("bad_table", path, dtypes={"x": "NUMERIC"})
    elif case == "no file":
        path.unlink()
    elif case == "key not a timestamp":
        write(path, {KEY: pa.array([1, 2], pa.int64()), "x": [1.0, 2.0]})
    elif case == "no chunks":
        table = InputTable("bad_table", ())
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the previous training file")
    with pytest.raises(MergeError, match=expected) as info:
        merge_to(out, spine_of(spine), [good, table])
    assert "bad_table" in str(info.value)
    if case != "no chunks":
        assert str(path) in str(info.value)
    assert out.read_bytes() == b"the previous training file"
    assert [p.name for p in out.parent.iterdir()] == ["training.parquet"]  # no temp file left


def test_a_bad_spine_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "targets.parquet", {KEY: minutes([0, 1]), "target_a": [1.0, 2.0]})
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    with pytest.raises(MergeError, match=r"targets\.parquet\): missing columns \['target_b'\]"):
        merge_to(out, spine_of(path), [])
    write(path, {KEY: minutes([]), "target_a": pa.array([], pa.float64()), "target_b": []})
    with pytest.raises(MergeError, match=r"targets\.parquet\): has no rows"):
        merge_to(out, spine_of(path), [])
    path.write_text("this is not parquet")
    with pytest.raises(MergeError, match=r"targets\.parquet\): not a readable parquet file"):
        merge_to(out, spine_of(path), [])
    with pytest.raises(MergeError, match=r"spine table targets \(no chunk\): has no chunks"):
        merge_to(out, InputTable("targets", ()), [])
    assert list(out.parent.iterdir()) == []


# -- checkpoints read in place from GCS, output streamed to GCS --------------------------------
STREAM_CHUNK = 256 * 1024  # the smallest resumable-upload chunk: several chunks per test file


def wide(folder: Path, name: str, keys: Sequence[int], columns: int, seed: int) -> Path:
    """A float table of random values (incompressible: the output spans many upload chunks),
    in several row groups, with a string column (dictionary pages)."""
    rng = np.random.default_rng(seed)
    data: dict = {KEY: minutes(keys)}
    for c in range(columns):
        values = rng.normal(size=len(keys))
        data[f"v{c}"] = pa.array(values, mask=values > 1.5)
    data["label"] = ["up" if k % 3 else "down" for k in keys]
    return write(folder / f"{name}.parquet", data, row_group_size=max(1, len(keys) // 3))


def local_set(folder: Path, rows: int = 3000, tables: int = 6) -> tuple[Path, list[Path]]:
    """A spine of `rows` minutes and `tables` wide tables, each starting a little later."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(rows))
    spine = write(
        folder / "targets.parquet",
        {
            KEY: minutes(order),
            "target_a": [float(m) for m in order],
            "target_b": [None if m % 7 == 0 else -float(m) for m in order],
        },
        row_group_size=rows // 2,
    )
    features = [
        wide(folder, f"t{i}", range(i * 10, rows + i * 10), 8, seed=i) for i in range(tables)
    ]
    return spine, features


def tables_of(files: Sequence[Path | StoredFile]) -> list[InputTable]:
    return [table_of(Path(str(f)).stem, f) for f in files]


def stored_inputs(
    storage: GCSStorage, spine: Path, features: Sequence[Path]
) -> tuple[StoredFile, list[StoredFile]]:
    """The same files uploaded to `storage` and opened in place, checked against their
    stored size and CRC32C as a pair's chunks are checked against their manifests."""

    def upload(path: Path) -> StoredFile:
        info = storage.put_file(path, path.name)
        return storage.open_file(path.name, size=info.size, crc32c=info.crc32c)

    return upload(spine), [upload(f) for f in features]


@pytest.mark.emulator
def test_stored_checkpoints_merge_to_the_same_file_as_local_ones(
    gcs_bucket: str, tmp_path: Path
) -> None:
    spine, features = local_set(tmp_path / "local")
    local_out = tmp_path / "local_out" / "training.parquet"
    local_out.parent.mkdir()
    merge_to(local_out, spine_of(spine), tables_of(features))

    storage = GCSStorage(gcs_bucket, "ckpt", chunk_size=STREAM_CHUNK)
    stored_spine, stored = stored_inputs(storage, spine, features)
    before = storage.reads.requests
    from_gcs = tmp_path / "gcs_out" / "training.parquet"
    from_gcs.parent.mkdir()
    merge_to(from_gcs, spine_of(stored_spine), tables_of(stored))
    assert from_gcs.read_bytes() == local_out.read_bytes()
    assert storage.reads.requests > before  # read by ranges, not through a local copy

    output = GCSStorage(gcs_bucket, "out", chunk_size=STREAM_CHUNK)
    report = merge_checkpoints(
        spine_of(stored_spine), tables_of(stored), output.stage("training.parquet")
    )
    assert report.staged.info.size > 3 * STREAM_CHUNK  # streamed in several chunks
    assert (report.staged.info.size, report.staged.info.crc32c) == (
        local_out.stat().st_size,
        file_crc32c(local_out),
    )
    # Column by column, too: the file read back from the object equals the local one.
    back = pq.ParquetFile(report.staged.file.reader()).read()
    assert back.equals(pq.read_table(local_out))
    output.discard(report.staged)
    # What stays: the segments the object was composed from (its magic and its row groups),
    # for a later upload of training.parquet to compose from instead of sending their bytes.
    left = list(output.list())
    assert left and all(k.startswith(f"{SEGMENTS_FOLDER}/training.parquet/") for k in left)
    assert sum(output.stat(k).size for k in left) < report.staged.info.size  # type: ignore[union-attr]


@pytest.mark.emulator
def test_a_checkpoint_replaced_while_merging_is_an_error_naming_it(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    spine, features = local_set(tmp_path / "local")
    storage = GCSStorage(gcs_bucket, "ckpt", chunk_size=STREAM_CHUNK)
    stored_spine, stored = stored_inputs(storage, spine, features)
    output = GCSStorage(gcs_bucket, "out", chunk_size=STREAM_CHUNK)
    published = output.write_bytes("training.parquet", b"the previous version")

    def replace_t3(line: str) -> None:
        if line.startswith("inputs checked"):  # after its footer and keys were read
            storage.put_file(features[0], "t3.parquet")  # another file, a new generation

    with pytest.raises(MergeError, match=r"table t3 \(gs://.*t3\.parquet\).*generation"):
        merge_checkpoints(
            spine_of(stored_spine),
            tables_of(stored),
            output.stage("training.parquet"),
            progress=replace_t3,
        )
    names = sorted(b.name for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="out/"))
    assert names == ["out/training.parquet"]  # no temporary object left
    assert output.read_bytes("training.parquet") == b"the previous version"
    assert output.stat("training.parquet") == published

    # Checked against its manifest when opened: a changed object is refused before any read.
    t3 = features[3]
    with pytest.raises(StorageError, match="changed since it was checked"):
        storage.open_file("t3.parquet", size=t3.stat().st_size, crc32c=file_crc32c(t3))


_KILLED_MERGE = """
import sys, time
from pathlib import Path
from bqx_assets.core.merge import InputTable, merge_checkpoints
from bqx_assets.core.storage.gcs import GCSStorage

bucket, spine, marker, *tables = sys.argv[1:]
storage = GCSStorage(bucket, "out", chunk_size=256 * 1024)
sink = storage.stage("training_eurusd.parquet")

def stall(line):
    # Some chunks are on the server, the upload is not finished: the test kills us here.
    if line.startswith("merged") and sink.tell() > 2 * 1024 * 1024:
        time.sleep(0.5)
        # Written whole, then renamed: the test kills us as soon as the marker exists.
        Path(marker + ".part").write_text(str(sink.tell()))
        Path(marker + ".part").replace(marker)
        time.sleep(3600)

columns = (("target_a", "target_a"), ("target_b", "target_b"))
targets = InputTable.of_files("targets", spine, columns=columns)
features = [InputTable.of_files(Path(t).stem, t) for t in tables]
merge_checkpoints(targets, features, sink, progress=stall)
"""


@pytest.mark.emulator
def test_a_merge_killed_while_streaming_leaves_nothing_and_a_rerun_publishes(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    spine, features = local_set(tmp_path / "local", rows=4000, tables=12)
    expected = tmp_path / "expected.parquet"
    merge_to(expected, spine_of(spine), tables_of(features))
    output = GCSStorage(gcs_bucket, "out", chunk_size=STREAM_CHUNK)
    previous = output.write_bytes("training_eurusd.parquet", b"the previous version")
    marker = tmp_path / "sent"
    args = [gcs_bucket, str(spine), str(marker), *map(str, features)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MERGE, *args],
        env=gcs_emulator.env(),
        cwd=Path(__file__).resolve().parents[3],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert int(marker.read_text()) > 2 * 1024 * 1024
    every = sorted(b.name for b in gcs_emulator.client().list_blobs(gcs_bucket))
    # Nothing half-written and no temporary object: the previous file, and the segments the
    # killed writer finished (whole objects, each checked as it was stored).
    segments = f"out/{SEGMENTS_FOLDER}/training_eurusd.parquet/"
    assert [n for n in every if not n.startswith(segments)] == ["out/training_eurusd.parquet"]
    assert output.stat("training_eurusd.parquet") == previous

    report = merge_checkpoints(
        spine_of(spine), tables_of(features), output.stage("training_eurusd.parquet")
    )
    result = publish_training_file(output, TrainingFile("eurusd", report.staged, passed=True))
    assert result.published and result.previous_uri is not None
    published = output.stat("training_eurusd.parquet")
    assert published is not None
    assert (published.size, published.crc32c) == (expected.stat().st_size, file_crc32c(expected))
    every = sorted(b.name for b in gcs_emulator.client().list_blobs(gcs_bucket))
    assert not [n for n in every if n.endswith(".tmp")]
    # The dead writer's segments are gone but those the published file was composed from (its
    # magic and its row groups: fewer bytes than the file, which has a footer too).
    kept = [b for b in gcs_emulator.client().list_blobs(gcs_bucket) if b.name.startswith(segments)]
    found = output.find_file("training_eurusd.parquet")
    assert found is not None
    meta = pq.ParquetFile(found.reader()).metadata
    assert len(kept) == 1 + meta.num_row_groups
    assert sum(int(b.size) for b in kept) < published.size


def test_a_local_output_root_publishes_what_the_sink_committed(tmp_path: Path, spine: Path) -> None:
    """The merged file is a temporary file of the output root until it is published: then it
    is under its key with the CRC32C the sink combined from its segments, and nothing else is
    left; discarded instead, nothing is."""
    root = LocalStorage(tmp_path / "out")
    f = table_of("f", feature(tmp_path, "f", range(10)))
    report = merge_checkpoints(spine_of(spine), [f], root.stage("training.parquet"))
    assert list(root.list()) == []  # not under any key yet
    assert list(root.temporaries("")) == [report.staged.key]
    info = root.publish_staged(report.staged, "training.parquet")
    assert (info.size, info.crc32c) == (report.staged.info.size, report.staged.info.crc32c)
    assert info.crc32c == file_crc32c(tmp_path / "out" / "training.parquet")
    assert list(root.temporaries("")) == []
    again = merge_checkpoints(spine_of(spine), [f], root.stage("training.parquet"))
    root.discard(again.staged)
    assert list(root.temporaries("")) == [] and list(root.list()) == ["training.parquet"]
