"""The embedded warehouse's DuckDB connection: bounded memory and threads, a wait for another
process's lock, and the SQL literals its queries are written with."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import duckdb

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
FROM_DUCK = {
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
COMMITS = threading.Lock()
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


def ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def text_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def among(dataset: str, tables: Sequence[str]) -> str:
    """`dataset = ... AND table_name IN (...)` as literals: a bound list parameter makes DuckDB's
    Python client import pandas (seconds of every refresh's partition look-up)."""
    names = ", ".join(text_literal(t) for t in tables) or "NULL"
    return f"dataset = {text_literal(dataset)} AND table_name IN ({names})"


def timestamp_literal(value: datetime) -> str:
    """A TIMESTAMPTZ literal (a naive datetime is UTC, as the connection's time zone)."""
    return f"TIMESTAMPTZ '{value.isoformat(sep=' ')}'"
