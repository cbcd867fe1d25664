"""The embedded warehouse: a synthetic, production-shaped warehouse in one DuckDB file, read as
BigQuery is (tables, per-day states, reads as of a cut) and grown by appends."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx_assets.core.catalog import HORIZONS, Catalog, SchemaRow
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.keys import by_key, key_text
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.base import (
    Cut,
    DateRange,
    PartitionState,
    PartitionStates,
    SourceState,
    TableRead,
    Warehouse,
)
from bqx_assets.core.warehouse.embedded.connection import (
    COMMITS,
    FROM_DUCK,
    LOCK_WAIT_S,
    META,
    among,
    connect,
    ident,
    text_literal,
    timestamp_literal,
)
from bqx_assets.core.warehouse.embedded.writes import (
    TableWriter,
    create_log,
    day_keys,
    epoch_us,
    logical_bytes,
    table_data,
    table_makers,
)
from bqx_assets.core.warehouse.faults import Fault
from bqx_assets.core.warehouse.synthetic import Series


class EmbeddedWarehouse(Warehouse):
    """A DuckDB file with one schema per BigQuery dataset; reads are concurrent cursors. Reads
    and day states as of a cut leave out what appends committed after it (the append log in the
    meta schema, `writes.create_log`), as BigQuery's snapshot time does; a file made before the log
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
            create_log(self._con)
        self._logged = bool(
            self._con.execute(
                "SELECT count(*) FROM information_schema.tables "
                f"WHERE table_schema = {text_literal(META)} AND table_name = 'appends'"
            ).fetchone()[0]
        )

    def cut(self) -> Cut:
        """A cut at this moment: every append committed by now is in it, none after it (each
        append batch is stamped with its commit time in the append log, `writes.create_log`)."""
        with COMMITS:
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
        return [SchemaRow(s, t, c, int(o), FROM_DUCK.get(d, d)) for s, t, c, o, d in rows]

    def state(self, dataset: str, table: str) -> SourceState:
        state = self.states(dataset, [table]).get(table)
        if state is None:
            raise WarehouseError(f"table {dataset}.{table} does not exist in {self.path}")
        return state

    def states(self, dataset: str, tables: Sequence[str]) -> dict[str, SourceState]:
        rows = (
            self._cursor()
            .execute(
                f"SELECT table_name, rows, bytes, last_modified FROM {ident(META, 'tables')} "
                f"WHERE {among(dataset, tables)}"
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
            f"FROM {ident(META, 'partitions')} "
            f"WHERE {among(dataset, tables)} ORDER BY table_name, day"
        )
        if cut is not None and self._logged:
            # Each day as it was at the cut: the state an append replaced after the cut (the
            # earliest such), else the current one; a day first written after the cut is left
            # out, as BigQuery's partitions at a snapshot time would be.
            at = timestamp_literal(cut.at)
            sql = (
                "SELECT table_name, day, rows, epoch_us(last_modified) FROM ("
                "SELECT table_name, day, rows, last_modified, until "
                f"FROM {ident(META, 'partition_history')} "
                f"WHERE {among(dataset, tables)} AND until > {at} UNION ALL "
                "SELECT table_name, day, rows, last_modified, NULL AS until "
                f"FROM {ident(META, 'partitions')} WHERE {among(dataset, tables)}) "
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
            where.append(f"{ident(KEY)} >= {timestamp_literal(window.start)}")
        if window.end is not None:
            where.append(f"{ident(KEY)} < {timestamp_literal(window.end)}")
        # No ORDER BY: DuckDB sorts wide rows slowly (3 s of a 232-column table's 3.3 s read at
        # 177,748 rows) and in its buffer pool (0.44 GiB), while the rows come back in insertion
        # order, which is key order (creation and appends write in key order); the order is
        # checked, and restored where needed, in Arrow, as the BigQuery read does.
        later = self._first_append_after(dataset, table, cut)
        if later is not None:  # the table as it was at the cut: its rows before that append
            where.append(f"{ident(KEY)} < make_timestamp({later[0]})::TIMESTAMPTZ")
        sql = f"SELECT {', '.join(ident(c) for c in columns)} FROM {ident(dataset, table)}" + (
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
                f"SELECT epoch_us(from_key), replaced FROM {ident(META, 'appends')} "
                f"WHERE dataset = {text_literal(dataset)} AND table_name = {text_literal(table)} "
                f"AND committed_at > {timestamp_literal(cut.at)} ORDER BY committed_at LIMIT 1"
            )
            .fetchone()
        )

    # -- embedded-only ---------------------------------------------------------------------------
    def export_parquet(self, dataset: str, table: str, path: Path) -> int:
        """The warehouse's own native parquet export of a table (for throughput comparison), rows
        in insertion order (key order) as `read` takes them: no sort."""
        self._cursor().execute(
            f"COPY (SELECT * FROM {ident(dataset, table)}) "
            f"TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
        )
        return path.stat().st_size

    def params(self) -> dict[str, str]:
        """The generation parameters: rows (now), plan_rows (at creation), seed, start, pairs."""
        rows = self._cursor().execute(f"SELECT name, value FROM {ident(META, 'params')}")
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
            .execute(f"SELECT value FROM {ident(META, 'params')} WHERE name = 'catalog'")
            .fetchone()
        )
        return Catalog.from_dict(json.loads(text))

    def faults(self) -> list[Fault]:
        """The faults written into this warehouse, in the order they were asked for."""
        rows = self._cursor().execute(
            f"SELECT kind, tables, value, column_name, counts FROM {ident(META, 'faults')} "
            "ORDER BY ordinal"
        )
        return [Fault.from_row(r) for r in rows.fetchall()]

    def partitions(self, dataset: str, table: str) -> list[PartitionState]:
        """Per-day states of a table (rows and last change per DATE(interval_time)), by day."""
        rows = self._cursor().execute(
            f"SELECT day, rows, last_modified FROM {ident(META, 'partitions')} "
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
        jobs = table_makers(catalog, grown)
        added: dict[str, int] = {}
        writer = TableWriter(self._cursor())
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
            f"UPDATE {ident(META, 'params')} SET value = ? WHERE name = 'rows'", [str(grown.rows)]
        )
        return added

    def append_minutes(self, dataset: str, table: str, minutes: int) -> SourceState:
        """Add `minutes` rows to one table after its last key, continuing its series (a source
        that changed while the others did not); a targets table's look-ahead rows are rewritten
        as in `append`."""
        self._require_writable(f"append to {dataset}.{table}")
        catalog, series = self.catalog(), self.series()
        if table not in {name for _, name, _ in table_makers(catalog, series)}:
            raise WarehouseError(f"table {dataset}.{table} is not in {self.path}'s catalog")
        since, last = self._revise_from(catalog, dataset, table)
        revised = self._rows_from(dataset, table, since)
        grow = minutes
        while True:  # a table off the spine (ETF hours, gaps) may need more minutes to grow
            new = _from_key(table_data(catalog, series.grown(grow), table), since, last)
            if new.num_rows >= revised + minutes or grow > minutes + 20_000:
                break
            grow *= 2
        writer = TableWriter(self._cursor())
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
                f"SELECT min({ident(KEY)}) FROM (SELECT {ident(KEY)} FROM "
                f"{ident(dataset, table)} ORDER BY {ident(KEY)} DESC LIMIT {REVISED_ROWS})"
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
                f"SELECT count(*) FROM {ident(dataset, table)} "
                f"WHERE {ident(KEY)} >= {timestamp_literal(since)}"
            )
            .fetchone()[0]
        )

    def _last_key(self, dataset: str, table: str) -> datetime | None:
        return (
            self._cursor()
            .execute(f"SELECT max({ident(KEY)}) FROM {ident(dataset, table)}")
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


def _replaced(
    blob: bytes, columns: Sequence[str], window: DateRange, schema: pa.Schema
) -> pa.Table:
    """`columns` of rows an append replaced (its log's Arrow IPC), within `window`."""
    rows = pa.ipc.open_stream(blob).read_all()
    keys = day_keys(rows)
    keep = np.ones(len(keys), dtype=bool)
    if window.start is not None:
        keep &= keys >= epoch_us(window.start)
    if window.end is not None:
        keep &= keys < epoch_us(window.end)
    return rows.filter(pa.array(keep)).select(list(columns)).cast(schema)
