"""The footer codec: files assembled from pyarrow-written pieces read back identically."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.errors import FooterError
from bqx_assets.core.layout import KEY, KEY_TYPE
from bqx_assets.core.merge.footer import (
    _FILE,
    _I64,
    _OFFSET_INDEX,
    MAGIC,
    FooterAssembler,
    Piece,
    _encoded,
    _read_struct,
    _unzigzag,
    _uvarint,
)

ROWS = 30_000
GROUP_ROWS = 12_000  # three row groups, the last one shorter
START_US = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1_000_000)
WRITER: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["code", "label", "flag"],
    "use_byte_stream_split": ["smooth", "noisy"],
    "write_statistics": True,
    "write_page_index": True,
    "data_page_size": 16 * 1024,  # several data pages per chunk: offset indexes with many pages
    "store_schema": False,
}
SPLITS: tuple[tuple[str, ...], ...] = ((KEY, "smooth"), ("noisy", "code"), ("label", "flag"))
"""Columns of each piece of a row group, as the merge cuts a row group into pieces."""


@pytest.fixture(scope="module")
def table() -> pa.Table:
    rng = np.random.default_rng(7)
    gaps = rng.random(ROWS) < 0.1
    return pa.table(
        {
            KEY: pa.array(START_US + np.arange(ROWS, dtype=np.int64) * 60_000_000, KEY_TYPE),
            "smooth": pa.array(np.cumsum(rng.normal(0, 0.01, ROWS)), mask=gaps),
            "noisy": pa.array(rng.normal(0, 0.087, ROWS)),
            "code": pa.array(rng.integers(0, 7, ROWS), pa.int64(), mask=~gaps),
            "label": pa.array(rng.choice(["asia", "london", "new_york"], ROWS)),
            "flag": pa.array(rng.random(ROWS) < 0.3),
        }
    )


def encode(part: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, part.schema, **WRITER) as writer:
        writer.write_table(part, row_group_size=max(1, part.num_rows))
    return sink.getvalue()


def groups() -> list[tuple[int, int]]:
    return [(a, min(a + GROUP_ROWS, ROWS)) for a in range(0, ROWS, GROUP_ROWS)]


def assemble(table: pa.Table, out: Path, splits: Sequence[Sequence[str]] = SPLITS) -> Path:
    footer = FooterAssembler()
    with open(out, "wb") as f:
        f.write(MAGIC)
        for r, (a, b) in enumerate(groups()):
            for columns in splits:
                piece = Piece.parse(encode(table.slice(a, b - a).select(list(columns))))
                footer.add(f, piece, r, b - a)
        f.write(footer.encode(table.num_rows))
    return out


@pytest.fixture(scope="module")
def assembled(table: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble(table, tmp_path_factory.mktemp("footer") / "assembled.parquet")


@pytest.fixture(scope="module")
def reference(table: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rows written by pyarrow in one go, with the same row groups and settings."""
    path = tmp_path_factory.mktemp("footer") / "reference.parquet"
    with pq.ParquetWriter(path, table.schema, **WRITER) as writer:
        for a, b in groups():
            writer.write_table(table.slice(a, b - a), row_group_size=b - a)
    return path


def test_pyarrow_reads_back_every_value(table: pa.Table, assembled: Path) -> None:
    back = pq.read_table(assembled)
    assert back.schema.names == table.schema.names
    assert back.cast(table.schema).equals(table)
    meta = pq.read_metadata(assembled)
    assert (meta.num_rows, meta.num_row_groups) == (ROWS, 3)


def test_polars_and_duckdb_read_back_every_value(table: pa.Table, assembled: Path) -> None:
    expected = pl.from_arrow(table)
    assert isinstance(expected, pl.DataFrame)
    polars_back = pl.read_parquet(assembled)
    assert polars_back.equals(expected)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    duck = con.execute(f"SELECT * FROM read_parquet('{assembled}')").pl()
    assert duck.columns == expected.columns
    assert duck.with_columns(pl.col(KEY).dt.convert_time_zone("UTC")).equals(expected)
    # DuckDB's filter pushdown reads the row-group statistics: a wrong one would drop rows.
    count = con.execute(
        f"SELECT count(*) FROM read_parquet('{assembled}') WHERE code = 3 AND flag"
    ).fetchone()
    assert count is not None
    assert count[0] == expected.filter((pl.col("code") == 3) & pl.col("flag")).height


def test_statistics_encodings_and_dictionary_pages_match_pyarrow(
    assembled: Path, reference: Path
) -> None:
    ours, theirs = pq.read_metadata(assembled), pq.read_metadata(reference)
    assert ours.schema.to_arrow_schema() == theirs.schema.to_arrow_schema()
    for r in range(theirs.num_row_groups):
        for c in range(theirs.num_columns):
            a, b = ours.row_group(r).column(c), theirs.row_group(r).column(c)
            assert a.statistics.to_dict() == b.statistics.to_dict(), (r, c)
            assert a.encodings == b.encodings and a.compression == b.compression
            assert a.total_compressed_size == b.total_compressed_size
            assert a.has_dictionary_page == b.has_dictionary_page
            assert a.has_offset_index and a.has_column_index
    encodings = {ours.row_group(0).column(c).path_in_schema: ours.row_group(0).column(c).encodings
                 for c in range(ours.num_columns)}  # fmt: skip
    assert "BYTE_STREAM_SPLIT" in encodings["smooth"] and "BYTE_STREAM_SPLIT" in encodings["noisy"]
    assert "RLE_DICTIONARY" in encodings["label"]


def _chunks(path: Path) -> tuple[bytes, list[dict[int, Any]]]:
    """The file's bytes and each column chunk's decoded fields (ColumnMetaData under 3)."""
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    meta, _ = _read_struct(data[-8 - length : -8], 0, _FILE)
    out = []
    for fid, _, value in meta:
        if fid == 4:
            for group in value[1]:
                for gid, _, chunks in group:
                    if gid == 1:
                        for chunk in chunks[1]:
                            fields = {f: v for f, _, v in chunk}
                            fields[3] = {f: v for f, _, v in fields[3]}
                            # total_compressed_size, copied raw by the codec: decoded here
                            fields[3][7] = _unzigzag(_uvarint(fields[3][7], 0)[0])
                            out.append(fields)
    return data, out


def _page_offsets(data: bytes, chunk: dict[int, Any]) -> list[int]:
    start, length = chunk[4], chunk[5]
    index, end = _read_struct(data[start : start + length], 0, _OFFSET_INDEX)
    assert end == length
    (locations,) = [value[1] for fid, _, value in index if fid == 1]
    return [next(v for f, _, v in loc if f == 1) for loc in locations]


def test_page_indexes_point_at_the_moved_pages(assembled: Path, reference: Path) -> None:
    ours, ours_chunks = _chunks(assembled)
    theirs, their_chunks = _chunks(reference)
    assert len(ours_chunks) == len(their_chunks) == 3 * 6
    multi_page = 0
    for a, b in zip(ours_chunks, their_chunks, strict=True):
        pages_a, pages_b = _page_offsets(ours, a), _page_offsets(theirs, b)
        multi_page += len(pages_a) > 1
        # Same pages at the same places relative to the chunk's first data page...
        first_a, first_b = a[3][9], b[3][9]
        assert [p - first_a for p in pages_a] == [p - first_b for p in pages_b]
        assert pages_a[0] == first_a
        # ...and the column index (min/max per page, no offsets) copied byte for byte.
        assert ours[a[6] : a[6] + a[7]] == theirs[b[6] : b[6] + b[7]]
        # The chunk's bytes, dictionary page first where there is one, are the same.
        start_a, start_b = a[3].get(11, first_a), b[3].get(11, first_b)
        size = a[3][7]
        assert ours[start_a : start_a + size] == theirs[start_b : start_b + size]
    assert multi_page >= 3 * 3  # key, smooth and noisy span several pages in each row group


def test_offset_varints_that_grow_are_rewritten(table: pa.Table, tmp_path: Path) -> None:
    # One piece per column: most pages move past 256 KiB, where their offsets take a varint byte
    # more than in the piece they came from (zigzag: 3 bytes under 1 MiB, 2 under 8 KiB).
    out = assemble(table, tmp_path / "narrow.parquet", splits=[(c,) for c in table.column_names])
    assert out.stat().st_size > 2**18
    assert pq.read_table(out).cast(table.schema).equals(table)
    data, chunks = _chunks(out)
    for chunk in chunks:
        assert _page_offsets(data, chunk)[0] == chunk[3][9]


# -- fields the codec does not know --------------------------------------------------------------
def _with_field(buffer: pa.Buffer, structure: str, fid: int) -> pa.Buffer:
    """The piece with an extra i64 field `fid` in one of its footer structures."""
    data = bytes(buffer)
    length = int.from_bytes(data[-8:-4], "little")
    meta, _ = _read_struct(data[-8 - length : -8], 0, _FILE)
    extra = (fid, _I64, 12_345)

    def add(fields: list) -> list:
        return sorted([*fields, extra], key=lambda field: field[0])

    if structure == "FileMetaData":
        meta = add(meta)
    else:
        (group,) = next(v for f, _, v in meta if f == 4)[1]
        (chunk, *rest) = next(v for f, _, v in group if f == 1)[1]
        if structure == "ColumnMetaData":
            chunk = [(f, k, add(v) if f == 3 else v) for f, k, v in chunk]
        elif structure == "ColumnChunk":
            chunk = add(chunk)
        group = [(f, k, (v[0], [chunk, *rest]) if f == 1 else v) for f, k, v in group]
        if structure == "RowGroup":
            group = add(group)
        meta = [(f, k, (v[0], [group]) if f == 4 else v) for f, k, v in meta]
    footer = _encoded(meta)
    body = data[: -8 - length]
    return pa.py_buffer(body + footer + len(footer).to_bytes(4, "little") + MAGIC)


@pytest.mark.parametrize(
    ("structure", "fid"),
    [("FileMetaData", 10), ("RowGroup", 8), ("ColumnChunk", 10), ("ColumnMetaData", 18)],
)
def test_an_unknown_field_is_refused_naming_structure_and_id(
    table: pa.Table, tmp_path: Path, structure: str, fid: int
) -> None:
    good = Piece.parse(encode(table.slice(0, 100).select([KEY, "smooth"])))
    bad = _with_field(encode(table.slice(0, 100).select(["noisy"])), structure, fid)
    out = tmp_path / "out.parquet"
    footer = FooterAssembler()
    with open(out, "wb") as f:
        f.write(MAGIC)
        footer.add(f, good, 0, 100)
        written = f.tell()
        with pytest.raises(FooterError, match=rf"{structure} field {fid} is not one"):
            footer.add(f, Piece.parse(bad), 0, 100)
        assert f.tell() == written  # refused before any of its bytes were written
    assert out.stat().st_size == written


def test_encrypted_column_metadata_is_refused(table: pa.Table) -> None:
    bad = _with_field(encode(table.slice(0, 10).select(["noisy"])), "ColumnChunk", 9)
    with pytest.raises(FooterError, match=r"ColumnChunk field 9 \(encrypted_column_metadata\)"):
        Piece.parse(bad)
