"""Pieces: a few columns of one table for the rows of one row group, aligned and encoded alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.keys import key_array, keys_us
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge.files import Blocks, open_parquet
from bqx_assets.core.merge.plan import TablePlan, by_chunk, wanted_groups
from bqx_assets.core.merge.rowgroups import OUTPUT_COMPRESSION, OUTPUT_COMPRESSION_LEVEL

PIECE_BYTES = 32 * 1024 * 1024
"""Decoded size of one piece (columns x rows x 8 bytes): what one worker holds at a time."""


def encode_piece(columns: Sequence[pa.Array | pa.ChunkedArray], names: Sequence[str]) -> pa.Buffer:
    """One piece as a complete parquet file in memory (one row group) with the output settings:
    zstd level 1, BYTE_STREAM_SPLIT for floats, dictionaries for the other types, statistics
    on (the gate reads null counts from the footer), no page index (it holds absolute
    offsets, and a copied row group moves)."""
    table = pa.table(list(columns), names=list(names))
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        table.schema,
        compression=OUTPUT_COMPRESSION,
        compression_level=OUTPUT_COMPRESSION_LEVEL,
        use_dictionary=dictionary or False,
        use_byte_stream_split=floats or False,
        write_page_index=False,
        write_statistics=True,
        store_schema=False,
    ) as writer:
        writer.write_table(table, row_group_size=max(1, table.num_rows))
    return sink.getvalue()


def piece_slices(count: int, rows: int) -> Iterator[slice]:
    """The columns of a table of `count` columns cut into pieces of PIECE_BYTES for `rows`."""
    width = max(1, PIECE_BYTES // max(1, rows * 8))
    for start in range(0, count, width):
        yield slice(start, min(start + width, count))


def spine_piece(keys: np.ndarray, spine: pa.Table, a: int, b: int, s: slice) -> pa.Buffer:
    """Columns `s` of the key and the spine's columns, for spine rows a..b."""
    part = spine.slice(a, b - a)
    columns = [key_array(keys[a:b]), *part.columns][s]
    return encode_piece(columns, [KEY, *part.column_names][s])


def table_piece(
    plan: TablePlan,
    keys: np.ndarray,
    s: slice,
    counted: tuple[int, np.ndarray] | None = None,
    blocks: dict[int, Blocks] | None = None,
) -> pa.Buffer:
    """Columns `s` of one table for the spine rows whose keys are `keys` (`blocks`: the piece's
    byte ranges of remote chunks, fetched ahead, by chunk), their nulls counted in the rows
    `counted` names (`CountedRows.within`).

    The alignment is recomputed for each piece of a wide table from its key column (~1 MB):
    cheaper than holding a table's decoded columns, and it keeps one piece the unit of memory."""
    columns = aligned_columns(plan, keys, s, blocks)
    if counted is not None:
        count_nulls(plan, s, columns, *counted)
    return encode_piece(columns, plan.names[s])


def aligned_columns(
    plan: TablePlan, keys: np.ndarray, s: slice, blocks: dict[int, Blocks] | None = None
) -> list[pa.Array | pa.ChunkedArray]:
    """Columns `s` of one table aligned to `keys` (sorted spine keys), null where it has no row,
    cast to the output types."""
    rows = len(keys)
    types = plan.types[s]
    wanted = wanted_groups(plan, keys)
    if not wanted:
        return [pa.nulls(rows, t) for t in types]
    try:
        reads = []
        for index, groups in by_chunk(plan, wanted).items():
            file, metadata = plan.files[index], plan.metadata[index]
            got = (blocks or {}).get(index) if metadata is not None else None
            pf = open_parquet(file, plan.where, metadata=metadata, blocks=got)
            reads.append(
                pf.read_row_groups(groups, columns=[KEY, *plan.columns[s]], use_threads=False)
            )
        read = reads[0] if len(reads) == 1 else pa.concat_tables(reads)
        pos, found = _align(keys_us(read.column(0), plan.where, MergeError), keys)
        read = read.drop_columns([KEY])
        if found.all() and pos[-1] - pos[0] == rows - 1 and bool(np.all(np.diff(pos) == 1)):
            aligned = read.slice(int(pos[0]), rows)  # same keys in the same order: no copy
        else:
            aligned = read.take(_indices(pos, found))
        return [
            c if c.type == t else pc.cast(c, t) for c, t in zip(aligned.columns, types, strict=True)
        ]
    except StorageError as exc:
        raise MergeError(f"{plan.where}: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{plan.where}: not a readable parquet file: {exc}") from exc


def count_nulls(
    plan: TablePlan,
    s: slice,
    columns: Sequence[pa.Array | pa.ChunkedArray],
    newest: int,
    reference: np.ndarray,
) -> None:
    """Add the nulls a piece of columns `s` holds from row `newest` on (the newest day's rows)
    and at rows `reference` (its reference minutes') to the table's record."""
    rows = len(columns[0]) if columns else 0
    at_newest = [c.slice(newest).null_count for c in columns] if newest < rows else None
    at_reference = None
    if len(reference):
        picked = pa.array(reference, pa.int64())
        at_reference = [c.take(picked).null_count for c in columns]
    if at_newest is not None or at_reference is not None:
        plan.count_nulls(s, at_newest, at_reference)


def _align(file_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each spine key, its row in `file_keys` and whether it is there at all."""
    if len(file_keys) > 1 and not bool(np.all(file_keys[1:] > file_keys[:-1])):
        order = np.argsort(file_keys, kind="stable")
        ordered = file_keys[order]
    else:
        order, ordered = None, file_keys
    pos = np.minimum(np.searchsorted(ordered, keys), len(ordered) - 1)
    found = ordered[pos] == keys
    return (order[pos] if order is not None else pos), found


def _indices(pos: np.ndarray, found: np.ndarray) -> pa.Array:
    """`pos` as take indices, null where not `found` (from the buffers: `pa.array` of a NumPy
    array imports pandas)."""
    data = np.ascontiguousarray(pos, dtype=np.int64)
    valid = pa.py_buffer(np.packbits(found, bitorder="little"))
    nulls = len(found) - int(np.count_nonzero(found))
    return pa.Array.from_buffers(pa.int64(), len(data), [valid, pa.py_buffer(data)], nulls)
