"""The embedded warehouse: a synthetic, production-shaped warehouse in one DuckDB file."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx_assets.core.catalog import HORIZONS, Catalog, SchemaRow, Table
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.keys import by_key, key_text
from bqx_assets.core.layout import KEY
from bqx_assets.core.memory import release_free_memory
from bqx_assets.core.warehouse.base import (
    Cut,
    DateRange,
    PartitionState,
    PartitionStates,
    SourceState,
    TableRead,
    Warehouse,
)
from bqx_assets.core.warehouse.faults import (
    Fault,
    FaultContext,
    FaultSpec,
    apply_fault,
    merge_records,
)
from bqx_assets.core.warehouse.synthetic import (
    DEFAULT_SEED,
    DEFAULT_START,
    Series,
    feature_table_data,
    pairs_in,
    rng_for,
    targets_table_data,
    trading_minutes,
)

__all__ = [
    "DEFAULT_START",
    "EmbeddedWarehouse",
    "PartitionState",
    "create_warehouse",
    "trading_minutes",
    "warehouse_params",
]

log = logging.getLogger(__name__)

META = "_bqx_meta"
DUCKDB_MEMORY_LIMIT = "512MB"
"""DuckDB's buffer pool cap on a connection that writes (creation, append): unset, it grows
toward 80 % of the machine's RAM (6.27 GiB peak while a 44K-row demo extracted). A write pins
only a commit batch's last, uncompressed row groups (`BATCH_BYTES` bounds the batch); the rest
of the pool caches blocks already written, which creation does not read again: at 1 GB, with
tables made ahead on threads, a pair's creation at 177,748 rows passed 2 GiB (512 MB: 1.59)."""
DUCKDB_READ_MEMORY_LIMIT = "256MB"
"""The cap on a read-only connection (extraction): reads stream a table's blocks into Arrow
without sorting (see `EmbeddedWarehouse.read`), so DuckDB needs little, while up to its cap it
keeps blocks already read, which extraction never reads again (1 GB of them beside four
threads' reads peaked at 2.0 GiB for a pair at 177,748 rows)."""
DUCKDB_THREADS = 2
DUCKDB_READ_THREADS = 1
"""Threads of a read-only connection (extraction): the extraction's own thread pool reads
tables in parallel, one query each, so a query's own threads only oversubscribe the cores. On
one, a refresh's restricted reads (a day or two of 668 tables at 177,748 rows) took 19.6 CPU-s
for the refresh against 22.4, and a build of 120 whole tables 34-35 against 37.5-38.7."""
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


LOCK_WAIT_S = 600.0
"""How long opening the file waits for another process's lock on it: DuckDB lets one process
hold a file read-write, or any number hold it read-only, never both
(https://duckdb.org/docs/stable/connect/concurrency). A `bqx warehouse append` started while a
run extracts therefore waits for the run's step to release the file (the run reads as of its
cut, so it does not see the append either way), and a run started during an append waits for
the append to finish; past this wait, the opener fails naming the file and the lock's holder."""
_LOCK_RETRY_S = (0.05, 1.0)
"""First and longest pause between tries to open a locked file (doubling in between)."""
_COMMITS = threading.Lock()
"""Held by an append from the time it stamps a batch until the batch commits, and by `cut()`:
in the appending process (the only one that can read the file meanwhile), a cut is either
before a batch's stamp, which it then does not see, or after its commit."""


def connect(
    path: Path | str, *, read_only: bool, lock_wait: float = LOCK_WAIT_S
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with bounded memory and threads (every connection the project opens),
    waiting up to `lock_wait` seconds while another process holds the file (`LOCK_WAIT_S`)."""
    limit = DUCKDB_READ_MEMORY_LIMIT if read_only else DUCKDB_MEMORY_LIMIT
    threads = DUCKDB_READ_THREADS if read_only else DUCKDB_THREADS
    deadline = time.monotonic() + lock_wait
    pause = _LOCK_RETRY_S[0]
    while True:
        try:
            con = duckdb.connect(
                str(path), read_only=read_only, config={"memory_limit": limit, "threads": threads}
            )
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() + pause > deadline:
                raise
            log.info("embedded warehouse %s is locked by another process: waiting", path)
            time.sleep(pause)
            pause = min(2 * pause, _LOCK_RETRY_S[1])
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def _ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _among(dataset: str, tables: Sequence[str]) -> str:
    """`dataset = ... AND table_name IN (...)` as literals: a bound list parameter makes DuckDB's
    Python client import pandas (seconds of every refresh's partition look-up)."""
    names = ", ".join(_text(t) for t in tables) or "NULL"
    return f"dataset = {_text(dataset)} AND table_name IN ({names})"


def _timestamp(value: datetime) -> str:
    """A TIMESTAMPTZ literal (a naive datetime is UTC, as the connection's time zone)."""
    return f"TIMESTAMPTZ '{value.isoformat(sep=' ')}'"


class EmbeddedWarehouse(Warehouse):
    """A DuckDB file with one schema per BigQuery dataset; reads are concurrent cursors. Reads
    and day states as of a cut leave out what appends committed after it (the append log in the
    meta schema, `_create_log`), as BigQuery's snapshot time does; a file made before the log
    existed is read as it is now until its first append creates the log."""

    name = "embedded"

    def __init__(
        self, path: Path | str, *, read_only: bool = True, lock_wait: float = LOCK_WAIT_S
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise WarehouseError(
                f"embedded warehouse {self.path} does not exist: create it with "
                "`bqx warehouse create --rows N`"
            )
        try:
            self._con = connect(self.path, read_only=read_only, lock_wait=lock_wait)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open embedded warehouse {self.path}: {exc}") from exc
        self._local = threading.local()
        if not read_only:
            _create_log(self._con)
        self._logged = bool(
            self._con.execute(
                "SELECT count(*) FROM information_schema.tables "
                f"WHERE table_schema = {_text(META)} AND table_name = 'appends'"
            ).fetchone()[0]
        )

    def cut(self) -> Cut:
        """A cut at this moment: every append committed by now is in it, none after it (each
        append batch is stamped with its commit time in the append log, `_create_log`)."""
        with _COMMITS:
            return Cut(datetime.now(UTC))

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
                f"WHERE {_among(dataset, tables)}"
            )
            .fetchall()
        )
        return {
            name: SourceState(
                dataset, name, int(n), modified.astimezone(UTC).isoformat(), int(size)
            )
            for name, n, size, modified in rows
        }

    def partition_states(
        self, dataset: str, tables: Sequence[str], *, cut: Cut | None = None
    ) -> PartitionStates:
        sql = (
            f"SELECT table_name, day, rows, epoch_us(last_modified) "
            f"FROM {_ident(META, 'partitions')} "
            f"WHERE {_among(dataset, tables)} ORDER BY table_name, day"
        )
        if cut is not None and self._logged:
            # Each day as it was at the cut: the state an append replaced after the cut (the
            # earliest such), else the current one; a day first written after the cut is left
            # out, as BigQuery's partitions at a snapshot time would be.
            at = _timestamp(cut.at)
            sql = (
                "SELECT table_name, day, rows, epoch_us(last_modified) FROM ("
                "SELECT table_name, day, rows, last_modified, until "
                f"FROM {_ident(META, 'partition_history')} "
                f"WHERE {_among(dataset, tables)} AND until > {at} UNION ALL "
                "SELECT table_name, day, rows, last_modified, NULL AS until "
                f"FROM {_ident(META, 'partitions')} WHERE {_among(dataset, tables)}) "
                "QUALIFY row_number() OVER (PARTITION BY table_name, day "
                "ORDER BY until ASC NULLS LAST) = 1 AND last_modified <= "
                f"{at} ORDER BY table_name, day"
            )
        rows = self._cursor().execute(sql).fetchall()
        # Times as epoch microseconds, each distinct one formatted once: a table has a day per
        # trading day (~150 at production length) and most share their write's time, while
        # DuckDB's time-zone-aware datetimes cost ~25 us each (5 s for one pair's 36K days).
        text: dict[int, str] = {}
        out: dict[str, list[PartitionState]] = {}
        for name, day, n, modified in rows:
            iso = text.get(modified)
            if iso is None:
                iso = text[modified] = key_text(modified)
            out.setdefault(name, []).append(PartitionState(day, int(n), iso))
        return PartitionStates({name: tuple(states) for name, states in out.items()})

    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        # The bounds as literals (ISO text of datetimes): binding a parameter makes DuckDB's
        # Python client import pandas (56 MB, and seconds on a busy machine).
        where = []
        if window.start is not None:
            where.append(f"{_ident(KEY)} >= {_timestamp(window.start)}")
        if window.end is not None:
            where.append(f"{_ident(KEY)} < {_timestamp(window.end)}")
        # No ORDER BY: DuckDB sorts wide rows slowly (3 s of a 232-column table's 3.3 s read at
        # 177,748 rows) and in its buffer pool (0.44 GiB), while the rows come back in insertion
        # order, which is key order (creation and appends write in key order); the order is
        # checked, and restored where needed, in Arrow, as the BigQuery read does.
        later = self._first_append_after(dataset, table, cut)
        if later is not None:  # the table as it was at the cut: its rows before that append
            where.append(f"{_ident(KEY)} < make_timestamp({later[0]})::TIMESTAMPTZ")
        sql = f"SELECT {', '.join(_ident(c) for c in columns)} FROM {_ident(dataset, table)}" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        try:
            data = self._cursor().execute(sql).to_arrow_table()
        except duckdb.CatalogException as exc:
            raise WarehouseError(f"cannot read {dataset}.{table}: {exc}") from exc
        except duckdb.BinderException as exc:
            raise WarehouseError(f"cannot read columns of {dataset}.{table}: {exc}") from exc
        if later is not None and later[1] is not None:
            # ... and the rows it rewrote, as they were (a targets table's look-ahead rows).
            data = pa.concat_tables([data, _replaced(later[1], columns, window, data.schema)])
        data, _ = by_key(data, f"{dataset}.{table}", WarehouseError)
        return TableRead(data, logical_bytes(data))

    def _first_append_after(
        self, dataset: str, table: str, cut: Cut | None
    ) -> tuple[int, bytes | None] | None:
        """(first key written, in epoch microseconds; rows it replaced, as Arrow IPC, or None)
        of the table's first append committed after `cut`, or None when none was: rows before
        that key are as they were at the cut (an append writes only from its first key on, and
        each append's first key is at or after the one before)."""
        if cut is None or not self._logged:
            return None
        return (
            self._cursor()
            .execute(
                f"SELECT epoch_us(from_key), replaced FROM {_ident(META, 'appends')} "
                f"WHERE dataset = {_text(dataset)} AND table_name = {_text(table)} "
                f"AND committed_at > {_timestamp(cut.at)} ORDER BY committed_at LIMIT 1"
            )
            .fetchone()
        )

    # -- embedded-only ---------------------------------------------------------------------------
    def export_parquet(self, dataset: str, table: str, path: Path) -> int:
        """The warehouse's own native parquet export of a table (for throughput comparison), rows
        in insertion order (key order) as `read` takes them: no sort."""
        self._cursor().execute(
            f"COPY (SELECT * FROM {_ident(dataset, table)}) "
            f"TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
        )
        return path.stat().st_size

    def params(self) -> dict[str, str]:
        """The generation parameters: rows (now), plan_rows (at creation), seed, start, pairs."""
        rows = self._cursor().execute(f"SELECT name, value FROM {_ident(META, 'params')}")
        return {k: v for k, v in rows.fetchall() if k != "catalog"}

    def series(self) -> Series:
        p = self.params()
        return Series(
            datetime.fromisoformat(p["start"]), int(p["plan_rows"]), int(p["rows"]), int(p["seed"])
        )

    def catalog(self) -> Catalog:
        """The catalog the warehouse was generated from (restricted to its pairs)."""
        (text,) = (
            self._cursor()
            .execute(f"SELECT value FROM {_ident(META, 'params')} WHERE name = 'catalog'")
            .fetchone()
        )
        return Catalog.from_dict(json.loads(text))

    def faults(self) -> list[Fault]:
        """The faults written into this warehouse, in the order they were asked for."""
        rows = self._cursor().execute(
            f"SELECT kind, tables, value, column_name, counts FROM {_ident(META, 'faults')} "
            "ORDER BY ordinal"
        )
        return [Fault.from_row(r) for r in rows.fetchall()]

    def partitions(self, dataset: str, table: str) -> list[PartitionState]:
        """Per-day states of a table (rows and last change per DATE(interval_time)), by day."""
        rows = self._cursor().execute(
            f"SELECT day, rows, last_modified FROM {_ident(META, 'partitions')} "
            "WHERE dataset = ? AND table_name = ? ORDER BY day",
            [dataset, table],
        )
        return [
            PartitionState(day, int(n), modified.astimezone(UTC).isoformat())
            for day, n, modified in rows.fetchall()
        ]

    def append(
        self, minutes: int, *, progress: Callable[[str], None] | None = None
    ) -> dict[str, int]:
        """Add the next `minutes` trading minutes to every table, continuing each series. A
        targets table's last REVISED_ROWS rows, whose look-ahead the new minutes now reach,
        are rewritten with their values (and their days marked changed). Tables with a fault
        are sources that stopped updating: left as they are. Returns the rows added per table."""
        if minutes < 1:
            raise WarehouseError(f"append needs at least 1 minute, not {minutes}")
        self._require_writable("append")
        catalog, series = self.catalog(), self.series()
        grown = series.grown(minutes)
        faulty = {t for f in self.faults() for t in f.tables}
        jobs = _jobs(catalog, grown)
        added: dict[str, int] = {}
        writer = _Writer(self._cursor())
        for i, (dataset, name, make) in enumerate(jobs, 1):
            added[name] = 0
            if name not in faulty:
                since, last = self._revise_from(catalog, dataset, name)
                new = _from_key(make(), since, last)
                added[name] = new.num_rows - self._rows_from(dataset, name, since)
                if new.num_rows:
                    writer.write(dataset, name, new, append=True, replace_from=since)
            if progress and (i % 100 == 0 or i == len(jobs)):
                progress(f"append: {i}/{len(jobs)} tables")
        writer.commit(append=True)
        self._cursor().execute(
            f"UPDATE {_ident(META, 'params')} SET value = ? WHERE name = 'rows'", [str(grown.rows)]
        )
        return added

    def append_minutes(self, dataset: str, table: str, minutes: int) -> SourceState:
        """Add `minutes` rows to one table after its last key, continuing its series (a source
        that changed while the others did not); a targets table's look-ahead rows are rewritten
        as in `append`."""
        self._require_writable(f"append to {dataset}.{table}")
        catalog, series = self.catalog(), self.series()
        if table not in {name for _, name, _ in _jobs(catalog, series)}:
            raise WarehouseError(f"table {dataset}.{table} is not in {self.path}'s catalog")
        since, last = self._revise_from(catalog, dataset, table)
        revised = self._rows_from(dataset, table, since)
        grow = minutes
        while True:  # a table off the spine (ETF hours, gaps) may need more minutes to grow
            new = _from_key(_jobs_one(catalog, series.grown(grow), table), since, last)
            if new.num_rows >= revised + minutes or grow > minutes + 20_000:
                break
            grow *= 2
        writer = _Writer(self._cursor())
        writer.write(
            dataset, table, new.slice(0, revised + minutes), append=True, replace_from=since
        )
        writer.commit(append=True)
        return self.state(dataset, table)

    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise WarehouseError(
                f"cannot {what}: embedded warehouse {self.path} is open read-only "
                "(EmbeddedWarehouse(path, read_only=False) writes)"
            )

    def _revise_from(
        self, catalog: Catalog, dataset: str, table: str
    ) -> tuple[datetime | None, datetime | None]:
        """(first key to rewrite or None, last key): a targets table's last REVISED_ROWS rows
        are rewritten; a feature table only gets rows after its last key."""
        last = self._last_key(dataset, table)
        if dataset != catalog.targets_dataset or last is None:
            return None, last
        row = (
            self._cursor()
            .execute(
                f"SELECT min({_ident(KEY)}) FROM (SELECT {_ident(KEY)} FROM "
                f"{_ident(dataset, table)} ORDER BY {_ident(KEY)} DESC LIMIT {REVISED_ROWS})"
            )
            .fetchone()
        )
        return row[0], last

    def _rows_from(self, dataset: str, table: str, since: datetime | None) -> int:
        if since is None:
            return 0
        return int(
            self._cursor()
            .execute(
                f"SELECT count(*) FROM {_ident(dataset, table)} "
                f"WHERE {_ident(KEY)} >= {_timestamp(since)}"
            )
            .fetchone()[0]
        )

    def _last_key(self, dataset: str, table: str) -> datetime | None:
        return (
            self._cursor()
            .execute(f"SELECT max({_ident(KEY)}) FROM {_ident(dataset, table)}")
            .fetchone()[0]
        )


def _from_key(data: pa.Table, since: datetime | None, last: datetime | None) -> pa.Table:
    """The rows to write: from `since` on (rewritten and new), else those after `last`."""
    keys = data.column(KEY)
    if since is not None:
        return data.filter(pc.greater_equal(keys, pa.scalar(since, type=keys.type)))
    if last is None:
        return data
    return data.filter(pc.greater(keys, pa.scalar(last, type=keys.type)))


REVISED_ROWS = max(HORIZONS)
"""Rows at a targets table's end that an append rewrites: a target at minute t for horizon h is
the price at t + h, null (look-ahead) until that minute exists, so the last max(HORIZONS) rows
take their values once the series grows past them. Feature tables' rolling windows look back:
their rows never change."""
BATCH_BYTES = 256 * 2**20
BATCH_TABLES = 50
"""A commit every this many logical bytes or tables: DuckDB holds a transaction's new data until
it commits, so memory stays bounded (one transaction of the whole warehouse was OOM-killed at
23.8 GiB), while a commit per small table would cost more than the table."""
_DAY_US = 86_400_000_000


class _Writer:
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
        name = _ident(dataset, table)
        removed = data.schema.empty_table()
        if replace_from is not None:
            where = f"WHERE {_ident(KEY)} >= {_timestamp(replace_from)}"
            removed = self.con.execute(f"SELECT * FROM {name} {where}").to_arrow_table()
            self.con.execute(f"DELETE FROM {name} {where}")
        if append and data.num_rows:
            first = _day_keys(data)[0] if replace_from is None else _us(replace_from)
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
        keys = np.concatenate([_day_keys(data), _day_keys(removed)])
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
        meta_tables, meta_days = _ident(META, "tables"), _ident(META, "partitions")
        if append:
            with _COMMITS:
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
        `_COMMITS`: a cut is either before it or after the commit)."""
        stamp = _timestamp(datetime.now(UTC))
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
        self.con.execute(f"INSERT INTO {_ident(META, 'appends')} SELECT {stamp}, * FROM _log")
        self.con.unregister("_log")
        self.con.execute(
            f"UPDATE {meta_tables} AS m SET rows = m.rows + t.rows, bytes = m.bytes + t.bytes,"
            f" last_modified = {stamp} FROM _tables AS t "
            "WHERE m.dataset = t.dataset AND m.table_name = t.table_name"
        )
        # The days' states this batch replaces, kept for reads as of an earlier cut.
        self.con.execute(
            f"INSERT INTO {_ident(META, 'partition_history')} SELECT p.dataset, "
            f"p.table_name, p.day, p.rows, p.last_modified, {stamp} FROM {meta_days} AS p "
            "SEMI JOIN _days AS d USING (dataset, table_name, day)"
        )
        self.con.execute(
            f"INSERT OR REPLACE INTO {meta_days} SELECT d.dataset, d.table_name, d.day, "
            f"coalesce(p.rows, 0) + d.rows, {stamp} FROM _days AS d "
            f"LEFT JOIN {meta_days} AS p USING (dataset, table_name, day)"
        )


def _us(value: datetime) -> int:
    """Epoch microseconds (a naive datetime is UTC, as the connection's time zone)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _ipc(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


def _replaced(
    blob: bytes, columns: Sequence[str], window: DateRange, schema: pa.Schema
) -> pa.Table:
    """`columns` of rows an append replaced (its log's Arrow IPC), within `window`."""
    rows = pa.ipc.open_stream(blob).read_all()
    keys = _day_keys(rows)
    keep = np.ones(len(keys), dtype=bool)
    if window.start is not None:
        keep &= keys >= _us(window.start)
    if window.end is not None:
        keep &= keys < _us(window.end)
    return rows.filter(pa.array(keep)).select(list(columns)).cast(schema)


def _day_keys(data: pa.Table) -> np.ndarray:
    return data.column(KEY).cast(pa.int64()).to_numpy()


def _jobs(catalog: Catalog, series: Series) -> list[tuple[str, str, Callable[[], pa.Table]]]:
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


CREATE_THREADS = 2
"""Threads generating tables ahead of the writer (numpy releases the GIL in its array work, and
DuckDB while it writes), so that generation overlaps the writes."""
AHEAD_BYTES = 384 * 2**20
"""Most logical bytes of tables being generated, made or being written at once (one table at
least): above the largest table (330 MB, a 232-column table at 177,748 rows), so that memory
stays what one table at a time needed, plus small tables made while it is written."""


def _made_in_order(
    makers: Sequence[Callable[[], pa.Table]],
    sizes: Sequence[int],
    *,
    threads: int = CREATE_THREADS,
    ahead_bytes: int = AHEAD_BYTES,
) -> Iterator[pa.Table]:
    """Each maker's table, in order, made on `threads` threads ahead of the caller: a maker
    starts while the tables started and not yet done with (by their `sizes`; the caller is done
    with a table when it asks for the next) stay within `ahead_bytes`, or when there are none.
    A maker's error is raised when its table is due; makers not yet started then never start."""
    pending: deque[tuple[Future[pa.Table], int]] = deque()
    held, following = 0, 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="warehouse") as pool:
        try:
            while pending or following < len(makers):
                while following < len(makers) and (
                    not pending or held + sizes[following] <= ahead_bytes
                ):
                    pending.append((pool.submit(makers[following]), sizes[following]))
                    held += sizes[following]
                    following += 1
                future, size = pending.popleft()
                yield future.result()
                del future  # the caller is done with the table: free it before making more
                held -= size
        finally:
            for future, _ in pending:
                future.cancel()


def _jobs_one(catalog: Catalog, series: Series, name: str) -> pa.Table:
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


def create_warehouse(
    path: Path | str,
    catalog: Catalog,
    *,
    pairs: Iterable[str],
    rows: int,
    seed: int = DEFAULT_SEED,
    start: datetime = DEFAULT_START,
    faults: Sequence[FaultSpec | str] = (),
    progress: Callable[[str], None] | None = None,
) -> EmbeddedWarehouse:
    """Create (or replace) the synthetic warehouse for `pairs` at `rows` minutes per pair, with
    `faults` written in (`FaultSpec` or `KIND[=VALUE]:TARGET[+TARGET...]`) and recorded.

    Tables are generated on `CREATE_THREADS` threads ahead of the writer (within `AHEAD_BYTES`)
    and written in order, in commit batches: memory stays bounded by the largest table, whatever
    the number of pairs, and the content is the generator's whatever the threads. The file
    appears at `path` only once complete.
    """
    pairs = [catalog.check_pair(p) for p in pairs]
    if rows < 10:
        raise WarehouseError(f"a warehouse needs at least 10 rows per table, not {rows}")
    catalog = catalog.subset(pairs)
    series = Series(start, rows, rows, seed)
    jobs = _jobs(catalog, series)
    tables = {t.name: t for p in catalog.pairs for t in catalog.tables_for(p)}
    specs = [FaultSpec.parse(f) if isinstance(f, str) else f for f in faults]
    by_table: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        for name in spec.resolve(tables):
            by_table.setdefault(name, []).append(i)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = connect(tmp, read_only=False)
    try:
        _create_meta(con, catalog)
        con.executemany(
            f"INSERT INTO {_ident(META, 'params')} VALUES (?, ?)",
            [("rows", str(rows)), ("plan_rows", str(rows)), ("seed", str(seed)),
             ("pairs", ",".join(pairs)), ("start", start.isoformat()),
             ("catalog", json.dumps(catalog.to_dict()))],
        )  # fmt: skip

        @lru_cache(maxsize=1)
        def targets_of(pair: str) -> pa.Table:
            name = _ident(catalog.targets_dataset, catalog.targets[pair].name)
            return con.execute(f"SELECT * FROM {name} ORDER BY {_ident(KEY)}").to_arrow_table()

        context = FaultContext(
            spine=series.spine(),
            rng=lambda name: rng_for(seed, name),
            targets_of=targets_of,
            leak_pair=lambda t: next((p for p in pairs_in(t.name) if p in pairs), pairs[0]),
        )
        records: dict[int, list[Fault]] = {}
        writer = _Writer(con)
        widths = {t.name: len(t.columns) for t in [*tables.values(), *catalog.targets.values()]}
        sizes = [8 * (1 + widths[name]) * rows for _, name, _ in jobs]
        # Closed on an error too: the tables made ahead are dropped and no more are started.
        with closing(_made_in_order([make for _, _, make in jobs], sizes)) as made:
            for i, ((dataset, name, _), data) in enumerate(zip(jobs, made, strict=True), 1):
                for index in by_table.get(name, ()):
                    data, record = apply_fault(specs[index], tables[name], data, context)
                    records.setdefault(index, []).append(record)
                writer.write(dataset, name, data, append=False)
                del data
                release_free_memory()
                if progress and (i % 100 == 0 or i == len(jobs)):
                    progress(f"warehouse: {i}/{len(jobs)} tables")
        writer.commit(append=False)
        for i in sorted(records):
            con.execute(
                f"INSERT INTO {_ident(META, 'faults')} VALUES (?, ?, ?, ?, ?, ?)",
                [i, *merge_records(records[i]).to_row()],
            )
        # Tables the refresh must leave out (DOMAIN: the summaries have no interval_time).
        for name in catalog.excluded:
            con.execute(
                f"CREATE TABLE {_ident(catalog.features_dataset, name)} AS "
                "SELECT DATE '2024-01-01' AS as_of_date, 0.5::DOUBLE AS mkt_reg_share"
            )
        con.execute("CHECKPOINT")
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
        raise
    con.close()
    tmp.replace(path)
    return EmbeddedWarehouse(path)


def _create_meta(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    for schema in (catalog.features_dataset, catalog.targets_dataset, META):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    con.execute(
        f"CREATE TABLE {_ident(META, 'tables')} (dataset VARCHAR, table_name VARCHAR, "
        "rows BIGINT, bytes BIGINT, last_modified TIMESTAMPTZ, PRIMARY KEY (dataset, table_name))"
    )
    con.execute(
        f"CREATE TABLE {_ident(META, 'partitions')} (dataset VARCHAR, table_name VARCHAR, "
        "day DATE, rows BIGINT, last_modified TIMESTAMPTZ, "
        "PRIMARY KEY (dataset, table_name, day))"
    )
    con.execute(
        f"CREATE TABLE {_ident(META, 'faults')} (ordinal INTEGER, kind VARCHAR, tables VARCHAR, "
        "value VARCHAR, column_name VARCHAR, counts VARCHAR)"
    )
    con.execute(f"CREATE TABLE {_ident(META, 'params')} (name VARCHAR PRIMARY KEY, value VARCHAR)")
    _create_log(con)


def _create_log(con: duckdb.DuckDBPyConnection) -> None:
    """The append log that reads as of a cut use (created in a file made before it had one): per
    table appended, when the append committed, its first key written and the rows it replaced
    (Arrow IPC; a targets table's rewritten look-ahead rows); and each day state an append
    replaced, with when (`until`)."""
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {_ident(META, 'appends')} (committed_at TIMESTAMPTZ, "
        "dataset VARCHAR, table_name VARCHAR, from_key TIMESTAMPTZ, replaced BLOB)"
    )
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {_ident(META, 'partition_history')} (dataset VARCHAR, "
        "table_name VARCHAR, day DATE, rows BIGINT, last_modified TIMESTAMPTZ, "
        "until TIMESTAMPTZ)"
    )


def warehouse_params(path: Path | str) -> dict[str, str] | None:
    """The generation parameters of an existing warehouse file, or None if there is none."""
    if not Path(path).exists():
        return None
    try:
        con = connect(path, read_only=True)
    except duckdb.Error:
        return None
    try:
        rows = con.execute(f"SELECT name, value FROM {_ident(META, 'params')}").fetchall()
        return {k: v for k, v in rows if k != "catalog"}
    except duckdb.Error:
        return None
    finally:
        con.close()
