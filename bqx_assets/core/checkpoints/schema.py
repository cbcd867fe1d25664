"""A table's checkpoint schema, and rows read from the warehouse checked and written as a chunk."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Table, TargetsTable
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.keys import by_key, check_unique
from bqx_assets.core.layout import ARROW_TYPES, CHECKPOINT_COMPRESSION, KEY, KEY_TYPE

Source = Table | TargetsTable
"""A warehouse table that is checkpointed: a feature table or a pair's targets table."""
ExtractMode = Literal["read", "export"]
EXTRACT_MODES: tuple[ExtractMode, ...] = ("read", "export")
READ_BYTES = 64 * 2**20
"""Most bytes (8 per column and row) one warehouse read of a table's neighbouring chunks asks for:
a refresh splits a longer run of chunks into several reads, a chunk at a time at least. Each
read is held whole (sorted by the warehouse, then as Arrow, then written), per extraction thread:
a whole 232-column table at 177,748 rows is 330 MB; its largest chunk, a month, ~75 MB. Above
BigQuery's 10 MB minimum per query, so reads of at least a month bill what one read would."""


def rows_per_read(source: Source) -> int:
    """Most rows of `source` one read asks for (READ_BYTES at 8 bytes per key and column)."""
    return max(1, READ_BYTES // (8 * (1 + len(source.columns))))


def owner_of(source: Source) -> str:
    return source.pair if isinstance(source, TargetsTable) else source.owner


def expected_schema(source: Source) -> pa.Schema:
    """The checkpoint schema of a table: the key, then its catalog columns in ordinal order."""
    return pa.schema(
        [pa.field(KEY, KEY_TYPE, nullable=False)]
        + [pa.field(c.name, ARROW_TYPES[c.dtype]) for c in source.columns]
    )


def schema_fingerprint(schema: pa.Schema) -> str:
    """A short hash of column names and types (nullability and metadata ignored)."""
    text = "\n".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def conform(data: pa.Table, source: Source) -> pa.Table:
    """Check and normalise a table read from the warehouse against the catalog.

    Keys become timestamp[us, UTC] (a unit or zone mix-up never turns into 1970 dates), rows are
    sorted by key, and duplicate keys, missing or mistyped columns are errors naming the table.
    """
    where = f"{source.dataset}.{source.name}"
    data, keys = by_key(data, where, ExtractionError)
    expected = expected_schema(source)
    present = set(data.column_names)
    missing = [name for name in expected.names if name not in present]
    if missing:
        raise ExtractionError(f"{where} lacks catalog columns {missing[:10]}")
    data = data.select(expected.names)
    # Compared per Field only when the types differ: iterating a schema makes a Field per column.
    same_types = data.schema.types == expected.types
    if not same_types:
        for field, actual in zip(expected, data.schema.types, strict=True):
            if actual != field.type and not (
                pa.types.is_large_string(actual) and field.type == pa.string()
            ):
                raise ExtractionError(
                    f"{where}.{field.name} is {actual}, the catalog says {field.type}"
                )
    check_unique(keys, where, ExtractionError)
    if same_types:
        # The columns as they are under the catalog's schema (its key not nullable: `keys_us`
        # found no null): what `cast` gives, without a cast kernel per column.
        return pa.Table.from_arrays(data.columns, schema=expected)
    return data.cast(expected)


def write_checkpoint(data: pa.Table, path: Path, row_group_rows: int) -> pq.FileMetaData:
    """Write `data` as a checkpoint file at `path`; returns the file's footer as written."""
    # Dictionary encoding only for strings (constant labels): trying it on float features costs
    # ~40% of the write for pages that fall back to plain encoding anyway.
    # Floats in BYTE_STREAM_SPLIT: smaller after zstd and ~3x faster for the merge to decode.
    # Names and types as two lists: iterating the schema makes a Field object per column.
    columns = list(zip(data.schema.names, data.schema.types, strict=True))
    strings = [name for name, kind in columns if pa.types.is_string(kind)]
    floats = [name for name, kind in columns if pa.types.is_floating(kind)]
    writer = pq.ParquetWriter(
        path,
        data.schema,
        compression=CHECKPOINT_COMPRESSION,
        use_dictionary=strings,
        use_byte_stream_split=floats,
        write_statistics=True,
    )
    try:
        writer.write_table(data, row_group_size=row_group_rows)
    except BaseException:
        # The write's own error (a full disk, say) is the one raised, not the close's.
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
    return writer.writer.metadata
