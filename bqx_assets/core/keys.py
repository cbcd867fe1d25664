"""The key column as int64 microseconds (one rule for every unit and zone) and its uniqueness."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx_assets.core.errors import BqxError
from bqx_assets.core.layout import KEY, KEY_TYPE

_UNIT_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXAMPLES = 5
"""Duplicate keys named in an error message (the count is always complete)."""


def keys_us(
    column: pa.ChunkedArray | pa.Array, where: str, error: type[BqxError] = BqxError
) -> np.ndarray:
    """The key column as int64 microseconds since the epoch, UTC; `error` (the caller's stage)
    names `where` when the column cannot be a key.

    The one rule: the key must be a timestamp without nulls. Arrow stores zoned timestamps as
    UTC instants, so any zone converts by relabelling, and naive timestamps are UTC wall time
    (BigQuery TIMESTAMP is UTC). The unit is scaled explicitly, and nanoseconds that are not whole
    microseconds are refused rather than truncated: reading microseconds as nanoseconds is how
    the first team got 1970 keys."""
    kind = column.type
    if not pa.types.is_timestamp(kind):
        raise error(f"{where}: key column {KEY} has type {kind}, expected a timestamp")
    if column.null_count:
        raise error(f"{where}: key column {KEY} has {column.null_count} null values")
    values = int64s(column)
    if kind.unit == "ns":
        if np.any(values % 1000):
            raise error(f"{where}: key column {KEY} has sub-microsecond values, not minute keys")
        return values // 1000
    return values * _UNIT_TO_US[kind.unit]


def int64s(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The values of a null-free integer or timestamp column as int64, from the buffer: not
    `to_numpy`, which imports pandas (seconds of a validation's budget)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = pc.cast(array, pa.int64())
    return np.frombuffer(
        array.buffers()[1], dtype=np.int64, count=len(array), offset=array.offset * 8
    ).copy()


def key_array(keys: np.ndarray) -> pa.Array:
    """Microsecond keys as the key column's Arrow type."""
    # From the buffer: `pa.array` of a NumPy array imports pandas (a second of a merge).
    data = np.ascontiguousarray(keys, dtype=np.int64)
    return pa.Array.from_buffers(KEY_TYPE, len(data), [None, pa.py_buffer(data)])


def pack_keys(keys: np.ndarray) -> str:
    """Int64 keys as compact text, in their order: zstd of their differences, base64. A day of
    minutes (1,440 keys, 11.5 KB) packs into a few dozen bytes; gaps cost only what they
    change."""
    deltas = np.diff(keys.astype(np.int64), prepend=np.int64(0)).astype("<i8")
    return base64.b64encode(pa.compress(deltas.tobytes(), codec="zstd", asbytes=True)).decode()


def unpack_keys(text: str, count: int) -> np.ndarray:
    """The `count` keys `pack_keys` packed into `text`; ValueError when it holds other than
    `count` keys."""
    try:
        raw = pa.decompress(
            base64.b64decode(text, validate=True), decompressed_size=count * 8, codec="zstd",
            asbytes=True,
        )  # fmt: skip
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValueError(f"packed keys unreadable: {exc}") from None
    if len(raw) != count * 8:
        raise ValueError(f"packed keys hold {len(raw) // 8} keys, expected {count}")
    return np.cumsum(np.frombuffer(raw, dtype="<i8")).astype(np.int64)


def key_text(us: int) -> str:
    """One key as ISO 8601 in UTC, as error messages and manifests write it."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def duplicated(keys: np.ndarray) -> tuple[int, np.ndarray]:
    """(rows that repeat an earlier key, the distinct repeated keys in order)."""
    ordered = keys if len(keys) < 2 or bool(np.all(keys[1:] >= keys[:-1])) else np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return len(repeated), np.unique(repeated)


def check_unique(keys: np.ndarray, where: str, error: type[BqxError] = BqxError) -> None:
    """Raise `error` naming `where` and its first duplicate keys if any key appears twice: a left
    join on such a table repeats spine rows (the first team's 100,000 -> 177,748 fan-out)."""
    count, distinct = duplicated(keys)
    if count:
        examples = ", ".join(key_text(int(k)) for k in distinct[:EXAMPLES])
        raise error(
            f"{where} has duplicate {KEY} values: {count} repeated rows of {len(distinct)} "
            f"distinct keys, e.g. {examples}; every key must appear once (a join would repeat "
            "spine rows)"
        )


def by_key(
    data: pa.Table, where: str, error: type[BqxError] = BqxError
) -> tuple[pa.Table, np.ndarray]:
    """`data` with its key column as KEY_TYPE and its rows in key order, and the keys in
    microseconds. Readers (Storage Read streams, export shards) return rows in no order."""
    if KEY not in data.column_names:
        raise error(f"{where} has no {KEY} column")
    index = data.column_names.index(KEY)
    keys = keys_us(data.column(index), where, error)
    if data.schema.field(index).type != KEY_TYPE:
        data = data.set_column(index, pa.field(KEY, KEY_TYPE, nullable=False), key_array(keys))
    if len(keys) > 1 and not bool(np.all(keys[1:] >= keys[:-1])):
        order = np.argsort(keys, kind="stable")
        data, keys = data.take(pa.array(order)), keys[order]
    return data, keys
