"""The embedded warehouse: a synthetic, production-shaped warehouse in one DuckDB file."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx_assets.core.catalog import (
    CURRENCIES,
    HORIZONS,
    PAIRS,
    Catalog,
    Column,
    SchemaRow,
    Table,
    TargetsTable,
)
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY, PAIR_COLUMN
from bqx_assets.core.warehouse import DateRange, SourceState, TableRead, Warehouse

log = logging.getLogger(__name__)

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday: the week opens at 00:00
META = "_bqx_meta"
_TO_DUCK = {
    "FLOAT64": "DOUBLE",
    "INT64": "BIGINT",
    "BOOL": "BOOLEAN",
    "STRING": "VARCHAR",
    "TIMESTAMP": "TIMESTAMPTZ",
}
_FROM_DUCK = {
    "DOUBLE": "FLOAT64",
    "BIGINT": "INT64",
    "BOOLEAN": "BOOL",
    "VARCHAR": "STRING",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
}
_STRING_VALUES = {
    "trading_session": ("asia", "london", "new_york"),
    "risk_sentiment": ("risk_on", "risk_off", "neutral"),
    "regime_label": ("trend", "range", "volatile"),
}


def trading_minutes(start: datetime, count: int) -> np.ndarray:
    """`count` minute keys from `start`, skipping the FX weekend (Fri 22:00 to Sun 22:00 UTC)."""
    start_us = np.datetime64(start.astimezone(UTC).replace(tzinfo=None), "us")
    out = np.empty(0, dtype="datetime64[us]")
    span = count
    while len(out) < count:
        minutes = start_us + np.arange(span * 2, dtype="int64").astype("timedelta64[m]")
        days = minutes.astype("datetime64[D]")
        weekday = (days.astype("int64") - 4) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        hour = (minutes - days).astype("timedelta64[h]").astype("int64")
        closed = ((weekday == 4) & (hour >= 22)) | (weekday == 5) | ((weekday == 6) & (hour < 22))
        out = minutes[~closed]
        span *= 2
    return out[:count]


def _rng(seed: int, name: str) -> np.random.Generator:
    # Per-table streams: a table's data does not depend on which other tables were generated.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _string_column(name: str, table: str, n: int, rng: np.random.Generator) -> pa.Array:
    values = _STRING_VALUES.get(name)
    if values is not None:
        return pa.array(np.asarray(values)[rng.integers(0, len(values), n)])
    tokens = table.split("_")
    pairs = [t for t in tokens if t in PAIRS] or ["xxxxxx"]
    currencies = [t for t in tokens if t in CURRENCIES]
    if name in ("pair1", "fx_pair"):
        constant = pairs[0]
    elif name == "pair2":
        constant = pairs[-1]
    elif name.startswith("currency"):
        index = int(name.removeprefix("currency") or 1) - 1
        constant = currencies[index] if index < len(currencies) else ""
    else:  # base_curr / quote_curr of a pair table
        constant = pairs[0][:3] if name == "base_curr" else pairs[0][3:]
    return pa.array([constant] * n, type=pa.string())


def _feature_column(
    column: Column, table: str, n: int, rng: np.random.Generator, null_rate: float
) -> pa.Array:
    mask = rng.random(n) < null_rate if null_rate else None
    if column.dtype == "FLOAT64":
        return pa.array(rng.normal(0.0, 1.0, n), mask=mask)
    if column.dtype == "INT64":
        return pa.array(rng.integers(0, 100, n), mask=mask)
    if column.dtype == "BOOL":
        return pa.array(rng.random(n) < 0.5, mask=mask)
    return _string_column(column.name, table, n, rng)


def _feature_keys(table: Table, spine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The keys a feature table holds: mostly the spine's, with production's irregularities."""
    n = len(spine)
    keys = spine
    if table.scope == "corr":
        keys = keys[int(n * 0.03) :]  # ETF sources start late
    elif table.scope == "shared":
        extra = spine[-1] + np.arange(1, 11, dtype="int64").astype("timedelta64[m]")
        keys = np.concatenate([keys, extra])  # runs past the spine: those keys are dropped
    if rng.random() < 0.05:
        keys = keys[: len(keys) - max(1, int(n * 0.005))]  # a table that stops a little early
    return keys


def feature_table_data(table: Table, spine: np.ndarray, seed: int) -> pa.Table:
    """Deterministic synthetic rows of a feature table over the spine's minutes."""
    rng = _rng(seed, table.name)
    keys = _feature_keys(table, spine, rng)
    n = len(keys)
    arrays = {KEY: pa.array(keys, type=pa.timestamp("us", tz="UTC"))}
    for column in table.columns:
        arrays[column.name] = _feature_column(column, table.name, n, rng, 0.001)
    if table.scope == "pair":
        arrays[PAIR_COLUMN] = pa.array([table.pairs[0]] * n, type=pa.string())
    return pa.table(arrays)


def targets_table_data(targets: TargetsTable, spine: np.ndarray, seed: int) -> pa.Table:
    """Targets over the spine: std ~0.087, null at the series ends (look-back and look-ahead)."""
    rng = _rng(seed, targets.name)
    n = len(spine)
    arrays = {KEY: pa.array(spine, type=pa.timestamp("us", tz="UTC"))}
    head = int(n * 0.002)
    for column in targets.columns:
        values = rng.normal(0.0, 0.087, n)
        mask = np.zeros(n, dtype=bool)
        mask[:head] = True
        if column.name.startswith("target_"):
            horizon = int(column.name.rsplit("_h", 1)[1])
            mask[n - int(n * 0.006 * horizon / max(HORIZONS)) :] = True
        arrays[column.name] = pa.array(values, mask=mask)
    arrays[PAIR_COLUMN] = pa.array([targets.pair] * n, type=pa.string())
    return pa.table(arrays)


def _ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


class EmbeddedWarehouse(Warehouse):
    """A DuckDB file with one schema per BigQuery dataset; reads are concurrent cursors."""

    name = "embedded"

    def __init__(self, path: Path | str, *, read_only: bool = True) -> None:
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise WarehouseError(
                f"embedded warehouse {self.path} does not exist: create it with "
                "`bqx warehouse create --rows N`"
            )
        try:
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open embedded warehouse {self.path}: {exc}") from exc
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute("SET enable_progress_bar = false")
        self._local = threading.local()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        # One cursor per thread: DuckDB connections are not safe to share across threads.
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._con.cursor()
            cursor.execute("SET TimeZone = 'UTC'")
        return cursor

    def close(self) -> None:
        self._con.close()

    # -- Warehouse -----------------------------------------------------------------------------
    def information_schema(self) -> list[SchemaRow]:
        rows = (
            self._cursor()
            .execute(
                "SELECT table_schema, table_name, column_name, ordinal_position, data_type "
                "FROM information_schema.columns WHERE table_schema <> ? "
                "ORDER BY table_schema, table_name, ordinal_position",
                [META],
            )
            .fetchall()
        )
        return [SchemaRow(s, t, c, int(o), _FROM_DUCK.get(d, d)) for s, t, c, o, d in rows]

    def state(self, dataset: str, table: str) -> SourceState:
        state = self.states(dataset, [table]).get(table)
        if state is None:
            raise WarehouseError(f"table {dataset}.{table} does not exist in {self.path}")
        return state

    def states(self, dataset: str, tables: Sequence[str]) -> dict[str, SourceState]:
        rows = (
            self._cursor()
            .execute(
                f"SELECT table_name, rows, bytes, last_modified FROM {_ident(META, 'tables')} "
                "WHERE dataset = ? AND list_contains(?, table_name)",
                [dataset, list(tables)],
            )
            .fetchall()
        )
        return {
            name: SourceState(
                dataset, name, int(n), modified.astimezone(UTC).isoformat(), int(size)
            )
            for name, n, size, modified in rows
        }

    def read(
        self, dataset: str, table: str, columns: Sequence[str], window: DateRange
    ) -> TableRead:
        where, params = [], []
        if window.start is not None:
            where.append(f"{_ident(KEY)} >= ?")
            params.append(window.start)
        if window.end is not None:
            where.append(f"{_ident(KEY)} < ?")
            params.append(window.end)
        sql = (
            f"SELECT {', '.join(_ident(c) for c in columns)} FROM {_ident(dataset, table)}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY {_ident(KEY)}"
        )
        try:
            data = self._cursor().execute(sql, params).to_arrow_table()
        except duckdb.CatalogException as exc:
            raise WarehouseError(f"cannot read {dataset}.{table}: {exc}") from exc
        except duckdb.BinderException as exc:
            raise WarehouseError(f"cannot read columns of {dataset}.{table}: {exc}") from exc
        return TableRead(data, logical_bytes(data))

    # -- embedded-only ---------------------------------------------------------------------------
    def export_parquet(self, dataset: str, table: str, path: Path) -> int:
        """The warehouse's own native parquet export of a table (for throughput comparison)."""
        self._cursor().execute(
            f"COPY (SELECT * FROM {_ident(dataset, table)} ORDER BY {_ident(KEY)}) "
            f"TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
        )
        return path.stat().st_size

    def append_minutes(self, dataset: str, table: str, minutes: int, seed: int = 1) -> SourceState:
        """Add `minutes` new rows after a table's last key (a source that changed)."""
        cursor = self._cursor()
        last = cursor.execute(
            f"SELECT max({_ident(KEY)}) FROM {_ident(dataset, table)}"
        ).fetchone()[0]
        current = cursor.execute(f"SELECT * FROM {_ident(dataset, table)} LIMIT 0").to_arrow_table()
        keys = trading_minutes(last + timedelta(minutes=1), minutes)
        rng = _rng(seed, f"{table}/append/{last.isoformat()}")
        arrays = {}
        for field in current.schema:
            if field.name == KEY:
                arrays[KEY] = pa.array(keys, type=pa.timestamp("us", tz="UTC"))
            elif pa.types.is_string(field.type):
                arrays[field.name] = pa.array(["x"] * minutes, type=pa.string())
            elif pa.types.is_boolean(field.type):
                arrays[field.name] = pa.array(rng.random(minutes) < 0.5)
            elif pa.types.is_integer(field.type):
                arrays[field.name] = pa.array(rng.integers(0, 100, minutes))
            else:
                arrays[field.name] = pa.array(rng.normal(0, 1, minutes))
        new = pa.table(arrays)
        cursor.register("_append", new)
        cursor.execute(f"INSERT INTO {_ident(dataset, table)} SELECT * FROM _append")
        cursor.unregister("_append")
        self._record(dataset, table)
        return self.state(dataset, table)

    def _record(self, dataset: str, table: str, data: pa.Table | None = None) -> None:
        cursor = self._cursor()
        if data is None:
            data = cursor.execute(f"SELECT * FROM {_ident(dataset, table)}").to_arrow_table()
        rows = data.num_rows
        width = logical_bytes(data) / max(1, rows)
        cursor.execute(
            f"INSERT OR REPLACE INTO {_ident(META, 'tables')} VALUES (?, ?, ?, ?, now())",
            [dataset, table, rows, int(rows * width)],
        )


def logical_bytes(data: pa.Table) -> int:
    """Bytes BigQuery bills for reading these columns: 8 per number or timestamp, 1 per BOOL,
    2 + UTF-8 length per STRING."""
    total = 0
    for column in data.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            total += 2 * len(column) + int(pc.sum(pc.binary_length(column)).as_py() or 0)
        elif pa.types.is_boolean(column.type):
            total += len(column)
        else:
            total += 8 * len(column)
    return total


def create_warehouse(
    path: Path | str,
    catalog: Catalog,
    *,
    pairs: Iterable[str],
    rows: int,
    seed: int = 7,
    start: datetime = DEFAULT_START,
    progress: Callable[[str], None] | None = None,
) -> EmbeddedWarehouse:
    """Create (or replace) the synthetic warehouse for `pairs` at `rows` minutes per pair."""
    pairs = [catalog.check_pair(p) for p in pairs]
    if rows < 10:
        raise WarehouseError(f"a warehouse needs at least 10 rows per table, not {rows}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    wh = EmbeddedWarehouse(tmp, read_only=False)
    con = wh._cursor()
    for schema in (catalog.features_dataset, catalog.targets_dataset, META):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    con.execute(
        f"CREATE TABLE {_ident(META, 'tables')} (dataset VARCHAR, table_name VARCHAR, "
        "rows BIGINT, bytes BIGINT, last_modified TIMESTAMPTZ, PRIMARY KEY (dataset, table_name))"
    )
    con.execute(f"CREATE TABLE {_ident(META, 'params')} (name VARCHAR, value VARCHAR)")
    con.executemany(
        f"INSERT INTO {_ident(META, 'params')} VALUES (?, ?)",
        [("rows", str(rows)), ("seed", str(seed)), ("pairs", ",".join(pairs)),
         ("start", start.isoformat())],
    )  # fmt: skip
    spine = trading_minutes(start, rows)
    # Synthetic noise does not compress: skipping DuckDB's compression analysis makes the one
    # commit of the whole warehouse (not one per table) about a third faster.
    con.execute("SET force_compression = 'uncompressed'")
    con.execute("BEGIN TRANSACTION")
    tables: dict[str, Table] = {}
    for pair in pairs:
        tables.update({t.name: t for t in catalog.tables_for(pair)})
    jobs: list[tuple[str, str, Callable[[], pa.Table]]] = [
        (catalog.targets_dataset, catalog.targets[p].name,
         lambda p=p: targets_table_data(catalog.targets[p], spine, seed))
        for p in pairs
    ]  # fmt: skip
    jobs += [
        (t.dataset, t.name, lambda t=t: feature_table_data(t, spine, seed)) for t in tables.values()
    ]
    for i, (dataset, name, make) in enumerate(jobs, 1):
        data = make()
        con.register("_new", data)
        con.execute(f"CREATE TABLE {_ident(dataset, name)} AS SELECT * FROM _new")
        con.unregister("_new")
        wh._record(dataset, name, data)
        if i % 100 == 0:  # bounded memory: DuckDB holds a transaction's new tables until commit
            con.execute("COMMIT")
            con.execute("BEGIN TRANSACTION")
        if progress and (i % 100 == 0 or i == len(jobs)):
            progress(f"warehouse: {i}/{len(jobs)} tables")
    # Tables the refresh must leave out (DOMAIN: the summaries have no interval_time).
    for name in catalog.excluded:
        con.execute(
            f"CREATE TABLE {_ident(catalog.features_dataset, name)} AS "
            "SELECT DATE '2024-01-01' AS as_of_date, 0.5::DOUBLE AS mkt_reg_share"
        )
    con.execute("COMMIT")
    wh.close()
    tmp.replace(path)
    return EmbeddedWarehouse(path)


def warehouse_params(path: Path | str) -> dict[str, str] | None:
    """The generation parameters of an existing warehouse file, or None if there is none."""
    if not Path(path).exists():
        return None
    with duckdb.connect(str(path), read_only=True) as con:
        try:
            return dict(con.execute(f"SELECT name, value FROM {_ident(META, 'params')}").fetchall())
        except duckdb.Error:
            return None
