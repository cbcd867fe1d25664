"""Names and parquet layout shared by extraction, merge, validation and storage."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from types import MappingProxyType

import pyarrow as pa

KEY = "interval_time"
"""The join key of every table: BigQuery TIMESTAMP, parquet timestamp[us, tz=UTC]."""
KEY_DTYPE = "TIMESTAMP"
"""The key's BigQuery type."""

KEY_UNIT = "us"
KEY_TZ = "UTC"
KEY_TYPE = pa.timestamp(KEY_UNIT, tz=KEY_TZ)
"""The key's Arrow type in checkpoints and training files, whatever unit a reader produced."""

ARROW_TYPES: Mapping[str, pa.DataType] = MappingProxyType(
    {
        "FLOAT64": pa.float64(),
        "INT64": pa.int64(),
        "BOOL": pa.bool_(),
        "STRING": pa.string(),
    }
)
"""BigQuery (standard SQL) type of a catalog column -> its Arrow type in checkpoints and the
training file. Its keys are the types the catalog accepts (`catalog.DTYPES`)."""


def canonical_type(kind: pa.DataType) -> pa.DataType:
    """`kind` as the training file stores it: every string type as `string` (readers may give
    `large_string` or `string_view` for a STRING column); other types as they are."""
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    return kind


PAIR_COLUMN = "pair"
"""Carried by pair-scoped warehouse tables; never extracted (DOMAIN: every column except `pair`)."""

PREFIX_SEPARATOR = "__"
"""Training-file feature names are `{table stem}__{column}`; no table or column name contains it."""

CHECKPOINT_ROW_GROUP_ROWS = 16_384
"""Checkpoints are written in row groups of this many rows so that a streaming reader of one
checkpoint holds at most one small row group of ~25 columns at a time."""

CHECKPOINT_COMPRESSION = "zstd"

EMBEDDED_WAREHOUSE_PATH = "data/warehouse.duckdb"
"""The embedded (DuckDB) warehouse's default file, relative to the working folder."""

SHARED_OWNER = "shared"
"""Checkpoints of tables used by more than one pair live under `shared/`, written once."""


def checkpoint_key(owner: str, table: str) -> str:
    """Storage key of a table's checkpoint, relative to the checkpoint root."""
    return f"{owner}/{table}.parquet"


def manifest_key(owner: str, table: str) -> str:
    """Storage key of a checkpoint's manifest (rows, schema fingerprint, source state, checksum)."""
    return f"{owner}/{table}.manifest.json"


def chunk_folder(owner: str, table: str) -> str:
    """Folder of a table's chunked checkpoint: one file and manifest per date-range chunk."""
    return f"{owner}/{table}"


def chunk_key(owner: str, table: str, first: date, last: date) -> str:
    """Storage key of the chunk holding days `first`..`last` (inclusive) of a table."""
    return f"{chunk_folder(owner, table)}/{first.isoformat()}_{last.isoformat()}.parquet"


def chunk_manifest_key(owner: str, table: str, first: date, last: date) -> str:
    return f"{chunk_folder(owner, table)}/{first.isoformat()}_{last.isoformat()}.manifest.json"


def chunk_index_key(owner: str, table: str) -> str:
    """Storage key of a table's chunk index: its chunks' manifests in one file, each with the
    size and CRC32C of the manifest it copies (a cache: the manifests stay the record)."""
    return f"{chunk_folder(owner, table)}/chunks.index.json"


def training_file_key(pair: str) -> str:
    """Storage key of a published training file, relative to the output root."""
    return f"training_{pair}.parquet"
