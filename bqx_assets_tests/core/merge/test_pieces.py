"""Pieces: a few columns of one table for one row group, encoded alone with the output's
settings, cut so that one piece is the unit of memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.layout import KEY, KEY_TYPE
from bqx_assets.core.merge.pieces import PIECE_BYTES, encode_piece, piece_slices, spine_piece

ROWS = 1000


def _columns() -> tuple[list[pa.Array], list[str]]:
    rng = np.random.default_rng(5)
    values = rng.normal(size=ROWS)
    return (
        [
            pa.array(values, mask=values > 1.0),
            pa.array(rng.integers(0, 5, ROWS), pa.int64()),
            pa.array(rng.random(ROWS) < 0.5),
            pa.array(rng.choice(["asia", "london"], ROWS)),
        ],
        ["f", "i", "b", "s"],
    )


def test_a_piece_is_one_row_group_with_the_output_settings() -> None:
    columns, names = _columns()
    piece = encode_piece(columns, names)
    pf = pq.ParquetFile(pa.BufferReader(piece))
    meta = pf.metadata
    assert (meta.num_rows, meta.num_row_groups, meta.num_columns) == (ROWS, 1, 4)
    assert pf.read().equals(pa.table(columns, names=names))
    group = meta.row_group(0)
    encodings = {names[c]: group.column(c).encodings for c in range(4)}
    assert "BYTE_STREAM_SPLIT" in encodings["f"]  # floats split by byte
    for name in ("i", "s"):  # the others in dictionaries (booleans have none: bit-packed)
        assert "RLE_DICTIONARY" in encodings[name], name
    assert "BYTE_STREAM_SPLIT" not in encodings["i"] + encodings["b"] + encodings["s"]
    for c in range(4):
        chunk = group.column(c)
        assert chunk.compression == "ZSTD"
        # Statistics on: the gate reads null counts from the footer.
        assert chunk.statistics is not None and chunk.statistics.has_null_count
        assert chunk.statistics.null_count == columns[c].null_count
        # No page index: it holds absolute offsets, and a copied row group moves.
        assert not chunk.has_offset_index and not chunk.has_column_index
    assert b"ARROW:schema" not in (meta.metadata or {})  # the footer carries no Arrow schema


def test_a_piece_is_the_same_bytes_for_the_same_columns() -> None:
    columns, names = _columns()
    assert encode_piece(columns, names) == encode_piece(list(columns), list(names))
    chunked = [pa.chunked_array([c.slice(0, 300), c.slice(300)]) for c in columns]
    assert encode_piece(chunked, names) == encode_piece(columns, names)


def test_an_empty_piece_still_has_its_columns() -> None:
    piece = encode_piece([pa.nulls(0, pa.float64()), pa.nulls(0, pa.string())], ["f", "s"])
    table = pq.read_table(pa.BufferReader(piece))
    assert table.num_rows == 0
    assert table.schema.types == [pa.float64(), pa.string()]


def test_a_spine_piece_holds_the_keys_and_the_spine_s_columns_of_its_rows() -> None:
    keys = np.arange(10, dtype=np.int64) * 60_000_000 + 1_700_000_000_000_000
    spine = pa.table(
        {"target_a": pa.array(np.arange(10.0)), "target_b": pa.array([None] * 10, pa.float64())}
    )
    piece = pq.read_table(pa.BufferReader(spine_piece(keys, spine, 2, 6, slice(0, 3))))
    assert piece.column_names == [KEY, "target_a", "target_b"]
    assert piece.schema.field(KEY).type == KEY_TYPE
    assert piece.column(KEY).cast(pa.int64()).to_pylist() == keys[2:6].tolist()
    assert piece.column("target_a").to_pylist() == [2.0, 3.0, 4.0, 5.0]
    # Columns 1 to 2 only (a piece of a spine too wide for one).
    part = pq.read_table(pa.BufferReader(spine_piece(keys, spine, 0, 4, slice(1, 3))))
    assert part.column_names == ["target_a", "target_b"]


@pytest.mark.parametrize(
    ("count", "rows", "piece_bytes", "widths"),
    [
        (10, 4, 64, [2, 2, 2, 2, 2]),  # 64 B / (4 rows x 8 B): two columns a piece
        (5, 4, 64, [2, 2, 1]),  # the last piece takes the rest
        (3, 1000, 64, [1, 1, 1]),  # a column wider than a piece is a piece of its own
        (3, 0, 64, [3]),  # no rows: every column in one piece
        (0, 4, 64, []),
        (17_031, 262_144, PIECE_BYTES, [16] * 1064 + [7]),  # production: ~16 columns a month
    ],
)
def test_pieces_cover_every_column_once_within_their_size(
    monkeypatch: pytest.MonkeyPatch, count: int, rows: int, piece_bytes: int, widths: list[int]
) -> None:
    monkeypatch.setattr("bqx_assets.core.merge.pieces.PIECE_BYTES", piece_bytes)
    slices = list(piece_slices(count, rows))
    assert [s.stop - s.start for s in slices] == widths
    covered = [c for s in slices for c in range(count)[s]]
    assert covered == list(range(count))
