"""A table's checkpoint schema, rows read from the warehouse checked against it (`conform`), and a
chunk's parquet file as written (`write_checkpoint`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints import schema
from bqx_assets.core.checkpoints.schema import (
    conform,
    expected_schema,
    owner_of,
    rows_per_read,
    schema_fingerprint,
    write_checkpoint,
)
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.layout import ARROW_TYPES, KEY, KEY_TYPE

WHEN = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
NS = [1709294400000000000, 1709294460000000000]
"""WHEN and a minute later, in nanoseconds."""


def _rows(source: schema.Source, keys: pa.Array, **overrides: pa.Array) -> pa.Table:
    """Two rows of every catalog column of `source` (values of its type), keys `keys`."""
    values = {"FLOAT64": [0.1, 0.2], "INT64": [1, 2], "BOOL": [True, False], "STRING": ["a", "b"]}
    cols = {c.name: pa.array(values[c.dtype], ARROW_TYPES[c.dtype]) for c in source.columns}
    return pa.table({KEY: keys, **cols, **overrides})


# -- the schema -----------------------------------------------------------------------------
def test_the_checkpoint_schema_is_the_key_then_the_catalog_columns(
    mini: tuple[Catalog, Path],
) -> None:
    catalog, _ = mini
    table = catalog.table("mkt_sentiment")
    expected = expected_schema(table)
    assert expected.names == [KEY, *(c.name for c in table.columns)]
    assert expected.field(KEY).type == KEY_TYPE and not expected.field(KEY).nullable
    assert expected.field("risk_sentiment").type == pa.string()
    assert expected.field("mkt_std_360").type == pa.int64()
    assert expected_schema(catalog.table("div_bqx_eurusd")).field(1).type == pa.bool_()
    # A targets table's checkpoint has no `pair` column: the pair is in the path.
    targets = catalog.targets["eurusd"]
    assert "pair" not in expected_schema(targets).names
    assert (owner_of(targets), owner_of(table), owner_of(catalog.table("agg_eurusd"))) == (
        "eurusd", "shared", "eurusd",
    )  # fmt: skip


def test_the_schema_fingerprint_follows_names_and_types_only(mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    base = expected_schema(catalog.table("tmp_eurusd"))
    loose = pa.schema([f.with_nullable(True) for f in base]).with_metadata({b"a": b"b"})
    assert schema_fingerprint(loose) == schema_fingerprint(base)
    retyped = base.set(1, pa.field(base.field(1).name, pa.large_string()))
    renamed = base.set(1, pa.field("other", base.field(1).type))
    fingerprints = {schema_fingerprint(s) for s in (base, retyped, renamed)}
    assert len(fingerprints) == 3


def test_rows_per_read_keeps_a_read_within_read_bytes(
    mini: tuple[Catalog, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, _ = mini
    table = catalog.table("agg_eurusd")
    assert rows_per_read(table) == schema.READ_BYTES // (8 * (1 + len(table.columns)))
    monkeypatch.setattr(schema, "READ_BYTES", 1)
    assert rows_per_read(table) == 1  # a row at least


# -- conform: rows read, checked and normalised ------------------------------------------------
def test_keys_in_other_units_and_zones_are_normalised(mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    table = catalog.targets["eurusd"]
    data = conform(_rows(table, pa.array(NS, pa.timestamp("ns"))), table)
    assert data.schema == expected_schema(table)
    assert data.column(KEY)[0].as_py() == WHEN  # not a 1970 date
    ny = pa.array([n // 10**6 for n in NS], pa.timestamp("ms", tz="America/New_York"))
    assert conform(_rows(table, ny), table).column(KEY)[0].as_py() == WHEN
    seconds = pa.array([n // 10**9 for n in NS], pa.timestamp("s", tz="UTC"))
    assert conform(_rows(table, seconds), table).column(KEY).to_pylist() == (
        conform(_rows(table, ny), table).column(KEY).to_pylist()
    )


def test_rows_are_sorted_by_key_in_catalog_column_order_without_other_columns(
    mini: tuple[Catalog, Path],
) -> None:
    catalog, _ = mini
    table = catalog.targets["eurusd"]
    keys = pa.array(list(reversed(NS)), pa.timestamp("ns", tz="UTC"))
    first = table.columns[0].name
    raw = _rows(table, keys, pair=pa.array(["eurusd"] * 2))
    # Columns in another order, and strings as large strings: the catalog's order and types.
    raw = raw.select([*reversed(raw.column_names)])
    data = conform(raw, table)
    assert data.schema == expected_schema(table)
    assert data.column(KEY)[0].as_py() == WHEN
    assert data.column(first).to_pylist() == [0.2, 0.1]  # the rows moved with their keys
    mkt = catalog.table("mkt_sentiment")
    large = _rows(mkt, pa.array(NS, pa.timestamp("us", tz="UTC")),
                  risk_sentiment=pa.array(["on", "off"], pa.large_string()))  # fmt: skip
    assert conform(large, mkt).schema == expected_schema(mkt)


def test_mistyped_or_missing_columns_name_the_table(mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    table = catalog.table("div_bqx_eurusd")
    keys = pa.array(NS, pa.timestamp("ns", tz="UTC"))
    mistyped = _rows(table, keys, div_short_leading=pa.array([1.0, 2.0]))
    with pytest.raises(
        ExtractionError, match=r"div_bqx_eurusd\.div_short_leading is double, the catalog says bool"
    ):
        conform(mistyped, table)
    with pytest.raises(ExtractionError, match="div_bqx_eurusd has no interval_time column"):
        conform(_rows(table, keys).drop_columns([KEY]), table)
    with pytest.raises(ExtractionError, match=r"lacks catalog columns \['div_short_leading'\]"):
        conform(_rows(table, keys).drop_columns(["div_short_leading"]), table)


def test_keys_that_are_no_keys_name_the_table(mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    table = catalog.table("agg_eurusd")
    where = r"bqx_ml_v3_features_v2\.agg_eurusd"
    with pytest.raises(ExtractionError, match=rf"{where}: key column interval_time has 1 null"):
        conform(_rows(table, pa.array([NS[0], None], pa.timestamp("ns"))), table)
    with pytest.raises(ExtractionError, match=rf"{where}: key column .* expected a timestamp"):
        conform(_rows(table, pa.array(["2024-03-01", "2024-03-02"])), table)
    with pytest.raises(ExtractionError, match=rf"{where}: key column .* sub-microsecond"):
        conform(_rows(table, pa.array([NS[0] + 1, NS[1]], pa.timestamp("ns"))), table)


def test_duplicate_keys_name_the_table_and_the_keys(mini: tuple[Catalog, Path]) -> None:
    """A left join on such a table repeats spine rows (the first team's fan-out)."""
    catalog, _ = mini
    table = catalog.table("mkt_sentiment")
    twice = pa.array([NS[0], NS[0]], pa.timestamp("ns", tz="UTC"))
    with pytest.raises(
        ExtractionError,
        match=r"mkt_sentiment has duplicate interval_time values: 1 repeated rows .*"
        r"2024-03-01T12:00:00\+00:00",
    ):
        conform(_rows(table, twice), table)


# -- the chunk file --------------------------------------------------------------------------
def test_a_checkpoint_is_written_in_row_groups_with_its_encodings(
    mini: tuple[Catalog, Path], tmp_path: Path
) -> None:
    catalog, _ = mini
    table = catalog.table("mkt_sentiment")
    n = 1000
    keys = pa.array([NS[0] + i * 60 * 10**9 for i in range(n)], pa.timestamp("ns", tz="UTC"))
    rows = {"FLOAT64": [i / 7 for i in range(n)], "INT64": list(range(n)),
            "STRING": ["risk-on"] * n}  # fmt: skip
    data = conform(pa.table({KEY: keys, **{c.name: rows[c.dtype] for c in table.columns}}), table)
    path = tmp_path / "chunk.parquet"
    written = write_checkpoint(data, path, row_group_rows=128)
    assert pq.read_table(path).equals(data)
    meta = pq.ParquetFile(path).metadata
    assert written.num_rows == meta.num_rows == n
    assert meta.num_row_groups == written.num_row_groups == -(-n // 128)
    encodings = {
        meta.schema.column(i).name: meta.row_group(0).column(i).encodings
        for i in range(meta.num_columns)
    }
    # Dictionary pages only for strings; floats split by byte stream.
    assert "RLE_DICTIONARY" in encodings["risk_sentiment"]
    assert "BYTE_STREAM_SPLIT" in encodings["mkt_mean_45"]
    assert "RLE_DICTIONARY" not in encodings["mkt_mean_45"]
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_a_failed_write_raises_its_own_error(
    mini: tuple[Catalog, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a full disk, say) raises its own error, not the close's."""
    catalog, _ = mini
    table = catalog.table("tmp_eurusd")
    data = conform(_rows(table, pa.array(NS, pa.timestamp("ns", tz="UTC"))), table)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    real_close = pq.ParquetWriter.close
    closes: list[int] = []

    def closing(self: pq.ParquetWriter) -> None:
        closes.append(1)
        if len(closes) == 1:
            raise RuntimeError("close after a failed write")
        real_close(self)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    monkeypatch.setattr(pq.ParquetWriter, "close", closing)
    with pytest.raises(OSError, match="No space left on device"):
        write_checkpoint(data, tmp_path / "chunk.parquet", row_group_rows=128)
    assert closes  # the writer was closed, its error set aside
