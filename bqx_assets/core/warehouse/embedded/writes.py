"""Writing the embedded warehouse: the tables a catalog's pairs generate, the writer that
commits them with their table and day states and the append log, and the meta schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx_assets.core.catalog import Catalog, Table
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.embedded.connection import (
    COMMITS,
    META,
    ident,
    timestamp_literal,
)
from bqx_assets.core.warehouse.synthetic import Series, feature_table_data, targets_table_data

BATCH_BYTES = 256 * 2**20
BATCH_TABLES = 50
"""A commit every this many logical bytes or tables: DuckDB holds a transaction's new data until
it commits, so memory stays bounded (one transaction of the whole warehouse was OOM-killed at
23.8 GiB), while a commit per small table would cost more than the table."""
_DAY_US = 86_400_000_000


class TableWriter:
    """Writes tables and their table and per-day states, committing in bounded batches."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.tables: list[tuple[str, str, int, int]] = []
        self.days: dict[str, list] = {"dataset": [], "table_name": [], "day": [], "rows": []}
        self.pending = 0
        self.open = False
        self.log: dict[str, list] = {
            "dataset": [],
            "table_name": [],
            "from_key": [],
            "replaced": [],
        }

    def write(
        self,
        dataset: str,
        table: str,
        data: pa.Table,
        *,
        append: bool,
        replace_from: datetime | None = None,
    ) -> None:
        """Create the table from `data`, or append `data` to it; with `replace_from`, its rows
        from that key on are deleted first (`data` rewrites them), in the same transaction."""
        if not self.open:
            self.con.execute("BEGIN TRANSACTION")
            self.open = True
        name = ident(dataset, table)
        removed = data.schema.empty_table()
        if replace_from is not None:
            where = f"WHERE {ident(KEY)} >= {timestamp_literal(replace_from)}"
            removed = self.con.execute(f"SELECT * FROM {name} {where}").to_arrow_table()
            self.con.execute(f"DELETE FROM {name} {where}")
        if append and data.num_rows:
            first = day_keys(data)[0] if replace_from is None else epoch_us(replace_from)
            self.log["dataset"].append(dataset)
            self.log["table_name"].append(table)
            self.log["from_key"].append(first)
            self.log["replaced"].append(_ipc(removed) if removed.num_rows else None)
        self.con.register("_new", data)
        if append:
            self.con.execute(f"INSERT INTO {name} SELECT * FROM _new")
        else:
            self.con.execute(f"CREATE TABLE {name} AS SELECT * FROM _new")
        self.con.unregister("_new")
        size = logical_bytes(data)
        self.tables.append(
            (dataset, table, data.num_rows - removed.num_rows, size - logical_bytes(removed))
        )
        # Rows per day, net of the rows replaced: every day written gets a new last-modified.
        keys = np.concatenate([day_keys(data), day_keys(removed)])
        signs = np.concatenate([np.ones(data.num_rows), -np.ones(removed.num_rows)])
        days, where_day = np.unique(keys // _DAY_US, return_inverse=True)
        counts = np.bincount(where_day, weights=signs, minlength=len(days))
        self.days["dataset"] += [dataset] * len(days)
        self.days["table_name"] += [table] * len(days)
        self.days["day"].append(days.astype("datetime64[D]"))
        self.days["rows"].append(np.rint(counts).astype(np.int64))
        self.pending += size
        if self.pending >= BATCH_BYTES or len(self.tables) >= BATCH_TABLES:
            self.commit(append=append)

    def commit(self, *, append: bool) -> None:
        """Table states, then day states (rows added to a day's count when appending; a new
        last-modified time for the days written), in the same transaction as the data."""
        if not self.open:
            return
        tables = pa.table(
            {k: list(v) for k, v in zip(("dataset", "table_name", "rows", "bytes"),
                                        zip(*self.tables, strict=True), strict=True)}
        )  # fmt: skip
        days = pa.table(
            {
                "dataset": self.days["dataset"],
                "table_name": self.days["table_name"],
                "day": np.concatenate(self.days["day"]),
                "rows": np.concatenate(self.days["rows"]),
            }
        )
        self.con.register("_tables", tables)
        self.con.register("_days", days)
        meta_tables, meta_days = ident(META, "tables"), ident(META, "partitions")
        if append:
            with COMMITS:
                self._append_states(meta_tables, meta_days)
                self._commit()
        else:
            self.con.execute(f"INSERT INTO {meta_tables} SELECT *, now() FROM _tables")
            self.con.execute(f"INSERT INTO {meta_days} SELECT *, now() FROM _days")
            self._commit()

    def _commit(self) -> None:
        self.con.unregister("_tables")
        self.con.unregister("_days")
        self.con.execute("COMMIT")
        self.__init__(self.con)

    def _append_states(self, meta_tables: str, meta_days: str) -> None:
        """An append batch's states: its tables' and days' (rows added, a new last-modified
        time), the days' states it replaces (`partition_history`) and its tables' entries in
        the append log, all stamped with one time taken just before the batch commits (under
        `COMMITS`: a cut is either before it or after the commit)."""
        stamp = timestamp_literal(datetime.now(UTC))
        log_rows = pa.table(
            {
                "dataset": pa.array(self.log["dataset"], pa.string()),
                "table_name": pa.array(self.log["table_name"], pa.string()),
                "from_key": pa.array(self.log["from_key"], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
                "replaced": pa.array(self.log["replaced"], pa.binary()),
            }
        )
        self.con.register("_log", log_rows)
        self.con.execute(f"INSERT INTO {ident(META, 'appends')} SELECT {stamp}, * FROM _log")
        self.con.unregister("_log")
        self.con.execute(
            f"UPDATE {meta_tables} AS m SET rows = m.rows + t.rows, bytes = m.bytes + t.bytes,"
            f" last_modified = {stamp} FROM _tables AS t "
            "WHERE m.dataset = t.dataset AND m.table_name = t.table_name"
        )
        # The days' states this batch replaces, kept for reads as of an earlier cut.
        self.con.execute(
            f"INSERT INTO {ident(META, 'partition_history')} SELECT p.dataset, "
            f"p.table_name, p.day, p.rows, p.last_modified, {stamp} FROM {meta_days} AS p "
            "SEMI JOIN _days AS d USING (dataset, table_name, day)"
        )
        self.con.execute(
            f"INSERT OR REPLACE INTO {meta_days} SELECT d.dataset, d.table_name, d.day, "
            f"coalesce(p.rows, 0) + d.rows, {stamp} FROM _days AS d "
            f"LEFT JOIN {meta_days} AS p USING (dataset, table_name, day)"
        )


def epoch_us(value: datetime) -> int:
    """Epoch microseconds (a naive datetime is UTC, as the connection's time zone)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _ipc(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


def day_keys(data: pa.Table) -> np.ndarray:
    return data.column(KEY).cast(pa.int64()).to_numpy()


def table_makers(catalog: Catalog, series: Series) -> list[tuple[str, str, Callable[[], pa.Table]]]:
    """(dataset, table, make its data) for every table of the catalog's pairs: targets first."""
    jobs: list[tuple[str, str, Callable[[], pa.Table]]] = [
        (catalog.targets_dataset, t.name, lambda t=t: targets_table_data(t, series))
        for t in (catalog.targets[p] for p in catalog.pairs)
    ]
    tables: dict[str, Table] = {}
    for pair in catalog.pairs:
        tables.update({t.name: t for t in catalog.tables_for(pair)})
    jobs += [
        (t.dataset, t.name, lambda t=t: feature_table_data(t, series)) for t in tables.values()
    ]
    return jobs


def table_data(catalog: Catalog, series: Series, name: str) -> pa.Table:
    for target in catalog.targets.values():
        if target.name == name:
            return targets_table_data(target, series)
    return feature_table_data(catalog.table(name), series)


def logical_bytes(data: pa.Table) -> int:
    """Bytes BigQuery bills for reading these columns: 8 per number or timestamp, 1 per BOOL,
    2 + UTF-8 length per STRING."""
    total = 0
    # By the schema's types, a column's data touched only for strings: a refresh reads ~670
    # tables of up to 233 columns a day or two long, where a column object each adds up.
    for i, kind in enumerate(data.schema.types):
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = data.column(i)
            total += 2 * len(column) + int(pc.sum(pc.binary_length(column)).as_py() or 0)
        elif pa.types.is_boolean(kind):
            total += data.num_rows
        else:
            total += 8 * data.num_rows
    return total


def create_meta(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    for schema in (catalog.features_dataset, catalog.targets_dataset, META):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
    con.execute(
        f"CREATE TABLE {ident(META, 'tables')} (dataset VARCHAR, table_name VARCHAR, "
        "rows BIGINT, bytes BIGINT, last_modified TIMESTAMPTZ, PRIMARY KEY (dataset, table_name))"
    )
    con.execute(
        f"CREATE TABLE {ident(META, 'partitions')} (dataset VARCHAR, table_name VARCHAR, "
        "day DATE, rows BIGINT, last_modified TIMESTAMPTZ, "
        "PRIMARY KEY (dataset, table_name, day))"
    )
    con.execute(
        f"CREATE TABLE {ident(META, 'faults')} (ordinal INTEGER, kind VARCHAR, tables VARCHAR, "
        "value VARCHAR, column_name VARCHAR, counts VARCHAR)"
    )
    con.execute(f"CREATE TABLE {ident(META, 'params')} (name VARCHAR PRIMARY KEY, value VARCHAR)")
    create_log(con)


def create_log(con: duckdb.DuckDBPyConnection) -> None:
    """The append log that reads as of a cut use (created in a file made before it had one): per
    table appended, when the append committed, its first key written and the rows it replaced
    (Arrow IPC; a targets table's rewritten look-ahead rows); and each day state an append
    replaced, with when (`until`)."""
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {ident(META, 'appends')} (committed_at TIMESTAMPTZ, "
        "dataset VARCHAR, table_name VARCHAR, from_key TIMESTAMPTZ, replaced BLOB)"
    )
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {ident(META, 'partition_history')} (dataset VARCHAR, "
        "table_name VARCHAR, day DATE, rows BIGINT, last_modified TIMESTAMPTZ, "
        "until TIMESTAMPTZ)"
    )
