"""Creating the embedded warehouse: every table of a catalog's pairs generated on threads ahead
of the writer, faults written in, the file in place only once complete."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import duckdb
import pyarrow as pa

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY
from bqx_assets.core.memory import release_free_memory
from bqx_assets.core.warehouse.embedded.connection import META, connect, ident
from bqx_assets.core.warehouse.embedded.warehouse import EmbeddedWarehouse
from bqx_assets.core.warehouse.embedded.writes import TableWriter, create_meta, table_makers
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
    pairs_in,
    rng_for,
)

CREATE_THREADS = 2
"""Threads generating tables ahead of the writer (numpy releases the GIL in its array work, and
DuckDB while it writes), so that generation overlaps the writes."""
AHEAD_BYTES = 384 * 2**20
"""Most logical bytes of tables being generated, made or being written at once (one table at
least): above the largest table (330 MB, a 232-column table at 177,748 rows), so that memory
stays what one table at a time needed, plus small tables made while it is written."""


def made_in_order(
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
    jobs = table_makers(catalog, series)
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
        create_meta(con, catalog)
        con.executemany(
            f"INSERT INTO {ident(META, 'params')} VALUES (?, ?)",
            [("rows", str(rows)), ("plan_rows", str(rows)), ("seed", str(seed)),
             ("pairs", ",".join(pairs)), ("start", start.isoformat()),
             ("catalog", json.dumps(catalog.to_dict()))],
        )  # fmt: skip

        @lru_cache(maxsize=1)
        def targets_of(pair: str) -> pa.Table:
            name = ident(catalog.targets_dataset, catalog.targets[pair].name)
            return con.execute(f"SELECT * FROM {name} ORDER BY {ident(KEY)}").to_arrow_table()

        context = FaultContext(
            spine=series.spine(),
            rng=lambda name: rng_for(seed, name),
            targets_of=targets_of,
            leak_pair=lambda t: next((p for p in pairs_in(t.name) if p in pairs), pairs[0]),
        )
        records: dict[int, list[Fault]] = {}
        writer = TableWriter(con)
        widths = {t.name: len(t.columns) for t in [*tables.values(), *catalog.targets.values()]}
        sizes = [8 * (1 + widths[name]) * rows for _, name, _ in jobs]
        # Closed on an error too: the tables made ahead are dropped and no more are started.
        with closing(made_in_order([make for _, _, make in jobs], sizes)) as made:
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
                f"INSERT INTO {ident(META, 'faults')} VALUES (?, ?, ?, ?, ?, ?)",
                [i, *merge_records(records[i]).to_row()],
            )
        # Tables the refresh must leave out (DOMAIN: the summaries have no interval_time).
        for name in catalog.excluded:
            con.execute(
                f"CREATE TABLE {ident(catalog.features_dataset, name)} AS "
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


def warehouse_params(path: Path | str) -> dict[str, str] | None:
    """The generation parameters of an existing warehouse file, or None if there is none."""
    if not Path(path).exists():
        return None
    try:
        con = connect(path, read_only=True)
    except duckdb.Error:
        return None
    try:
        rows = con.execute(f"SELECT name, value FROM {ident(META, 'params')}").fetchall()
        return {k: v for k, v in rows if k != "catalog"}
    except duckdb.Error:
        return None
    finally:
        con.close()
