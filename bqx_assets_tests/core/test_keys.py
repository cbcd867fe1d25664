"""The key column: one rule for every unit and zone, packed keys, and duplicates named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from bqx_assets.core.errors import BqxError, MergeError
from bqx_assets.core.keys import (
    EXAMPLES,
    by_key,
    check_unique,
    duplicated,
    int64s,
    key_array,
    key_text,
    keys_us,
    pack_keys,
    unpack_keys,
)
from bqx_assets.core.layout import KEY, KEY_TYPE

START = datetime(2024, 3, 4, tzinfo=UTC)
START_US = int(START.timestamp()) * 1_000_000
MINUTE = 60_000_000


def stamps(minutes: list[int], unit: str = "us", tz: str | None = "UTC") -> pa.Array:
    values = [START + timedelta(minutes=m) for m in minutes]
    return pa.array(values, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz=tz))


@pytest.mark.parametrize(
    ("unit", "tz"),
    [
        ("s", "UTC"),
        ("ms", "UTC"),
        ("us", "UTC"),
        ("ns", "UTC"),
        ("us", None),
        ("ns", "America/New_York"),
        ("ms", "Asia/Tokyo"),
    ],
)
def test_keys_of_any_unit_and_zone_are_utc_microseconds(unit: str, tz: str | None) -> None:
    keys = keys_us(stamps([0, 1, 90], unit, tz), "t")
    assert keys.dtype == np.int64
    assert keys.tolist() == [START_US, START_US + MINUTE, START_US + 90 * MINUTE]
    chunked = pa.chunked_array([stamps([0], unit, tz), stamps([1, 90], unit, tz)])
    assert keys_us(chunked, "t").tolist() == keys.tolist()


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            pa.array([1, 2], pa.int64()),
            "key column interval_time has type int64, expected a timestamp",
        ),
        (pa.array(["2024-03-04"]), "has type string"),
        (pa.array([START, None], pa.timestamp("us", tz="UTC")), "has 1 null values"),
        (pa.array([1_000_000_001], pa.timestamp("ns", tz="UTC")), "sub-microsecond values"),
    ],
)
def test_a_column_that_cannot_be_a_key_is_an_error_naming_where(
    column: pa.Array, message: str
) -> None:
    with pytest.raises(MergeError, match=rf"^table t \(a\.parquet\): .*{message}"):
        keys_us(column, "table t (a.parquet)", MergeError)
    with pytest.raises(BqxError, match=message):  # the default: the project's base error
        keys_us(column, "t")


def test_int64s_reads_the_buffer_of_a_sliced_column() -> None:
    column = pa.array(np.arange(10, dtype=np.int64)).slice(3, 4)
    assert int64s(column).tolist() == [3, 4, 5, 6]
    assert int64s(pa.chunked_array([pa.array([1, 2]), pa.array([3])])).tolist() == [1, 2, 3]


def test_key_array_is_the_key_type_of_the_same_instants() -> None:
    keys = np.array([START_US, START_US + MINUTE], dtype=np.int64)
    array = key_array(keys)
    assert array.type == KEY_TYPE
    assert array.to_pylist() == [START, START + timedelta(minutes=1)]
    assert keys_us(array, "t").tolist() == keys.tolist()


@pytest.mark.parametrize(
    "keys",
    [
        np.arange(1440, dtype=np.int64) * MINUTE + START_US,  # a day of minutes
        np.array([START_US + 5 * MINUTE, START_US, START_US + 3 * MINUTE]),  # in file order
        np.array([-MINUTE, 0, 2**62], dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    ],
    ids=["a day", "unsorted", "extremes", "none"],
)
def test_packed_keys_unpack_to_the_same_keys_in_their_order(keys: np.ndarray) -> None:
    text = pack_keys(keys)
    assert isinstance(text, str)
    back = unpack_keys(text, len(keys))
    assert back.dtype == np.int64 and back.tolist() == keys.tolist()


def test_a_day_of_minutes_packs_into_a_few_dozen_bytes() -> None:
    day = np.arange(1440, dtype=np.int64) * MINUTE + START_US
    assert len(pack_keys(day)) < 100


def test_packed_keys_of_another_count_or_not_packed_are_a_value_error() -> None:
    text = pack_keys(np.arange(5, dtype=np.int64))
    with pytest.raises(ValueError, match="packed keys"):
        unpack_keys(text, 6)
    with pytest.raises(ValueError, match="packed keys"):
        unpack_keys(text, 4)
    with pytest.raises(ValueError, match="packed keys unreadable"):
        unpack_keys("not base64 !", 5)
    with pytest.raises(ValueError, match="packed keys unreadable"):
        unpack_keys("AAAA", 5)  # base64, not zstd


def test_key_text_is_iso_utc() -> None:
    assert key_text(START_US + MINUTE) == "2024-03-04T00:01:00+00:00"


def test_duplicated_counts_repeated_rows_and_distinct_keys() -> None:
    count, distinct = duplicated(np.array([5, 1, 5, 2, 2, 2, 9]))
    assert count == 3 and distinct.tolist() == [2, 5]
    count, distinct = duplicated(np.array([1, 2, 3]))
    assert count == 0 and distinct.tolist() == []


def test_check_unique_names_where_the_count_and_the_first_duplicates() -> None:
    check_unique(np.array([3, 1, 2]), "t")  # unique, in any order
    keys = np.array(
        [START_US + m * MINUTE for m in [0, 1, 1, 2, 2, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]]
    )
    with pytest.raises(MergeError) as info:
        check_unique(keys, "table t (a.parquet)", MergeError)
    message = str(info.value)
    assert message.startswith("table t (a.parquet) has duplicate interval_time values")
    assert "8 repeated rows of 7 distinct keys" in message
    assert message.count("2024-03-04T") == EXAMPLES  # the count is whole, the examples a few
    assert "2024-03-04T00:01:00" in message and "2024-03-04T00:06:00" not in message


def test_by_key_orders_rows_and_normalises_the_key() -> None:
    data = pa.table({KEY: stamps([2, 0, 1], "ns"), "x": [2.0, 0.0, 1.0]})
    ordered, keys = by_key(data, "t")
    assert ordered.schema.field(KEY).type == KEY_TYPE
    assert ordered.column("x").to_pylist() == [0.0, 1.0, 2.0]
    assert keys.tolist() == [START_US, START_US + MINUTE, START_US + 2 * MINUTE]
    same, _ = by_key(ordered, "t")
    assert same.equals(ordered)
    with pytest.raises(MergeError, match=r"^t has no interval_time column"):
        by_key(pa.table({"x": [1.0]}), "t", MergeError)
