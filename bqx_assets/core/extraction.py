"""Extraction: warehouse tables to sorted, verified parquet checkpoints with manifests."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Table, TargetsTable
from bqx_assets.core.errors import BqxError, ExtractionError
from bqx_assets.core.keys import by_key, check_unique, key_text
from bqx_assets.core.layout import (
    ARROW_TYPES,
    CHECKPOINT_COMPRESSION,
    CHECKPOINT_ROW_GROUP_ROWS,
    KEY,
    KEY_TYPE,
    checkpoint_key,
    manifest_key,
)
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage import Storage
from bqx_assets.core.warehouse import DateRange, SourceState, TableRead, Warehouse

log = logging.getLogger(__name__)
T = TypeVar("T")

Source = Table | TargetsTable
MANIFEST_FORMAT = 1
ALL_TIME = DateRange()
ExtractMode = Literal["read", "export"]
EXTRACT_MODES: tuple[ExtractMode, ...] = ("read", "export")
READ_BYTES = 64 * 2**20
"""Most bytes (8 per column and row) one warehouse read of a table's neighbouring chunks asks for:
a refresh splits a longer run of chunks into several reads, a chunk at a time at least. Each
read is held whole (sorted by the warehouse, then as Arrow, then written), per extraction thread:
a whole 232-column table at 177,748 rows is 330 MB; its largest chunk, a month, ~75 MB. Above
BigQuery's 10 MB minimum per query, so reads of at least a month bill what one read would."""


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's `malloc_trim`; elsewhere a
    no-op). Tables read and written on several threads leave their freed Arrow and numpy
    buffers in glibc's per-thread arenas, whose RSS then creeps up run-long: a full-length
    shared extraction (411 tables, 4 threads) peaked at 1.99 GiB with reads holding ~0.8 GiB."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


TRIM_GROWTH_BYTES = 64 * 2**20
"""RSS above its lowest level since the last trim that makes `MemoryReturn` trim after a
table. A trim walks every arena (~2.4 ms at a refresh's heap size, 1.6 s over 668 tables)
while a refresh's table reads a day or two and frees a few MB, which the next table reuses."""
_STATM = Path("/proc/self/statm")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    """This process's resident set size now (Linux), else None."""
    try:
        return int(_STATM.read_bytes().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


class MemoryReturn:
    """`release_free_memory` after a table only when the process's RSS has grown by
    TRIM_GROWTH_BYTES above the lowest seen since the last trim (or always, where RSS cannot be
    read): tables that read little cost no trim, while freed memory never stays held above
    that margin once a table is done. Thread-safe."""

    def __init__(self, growth: int = TRIM_GROWTH_BYTES) -> None:
        self.growth = growth
        self.trims = 0
        self._lock = threading.Lock()
        self._low = _rss_bytes()

    def after_table(self) -> None:
        rss = _rss_bytes()
        with self._lock:
            if rss is not None and self._low is not None:
                self._low = min(self._low, rss)
                if rss - self._low < self.growth:
                    return
            release_free_memory()
            self.trims += 1
            self._low = _rss_bytes()


def rows_per_read(source: Source) -> int:
    """Most rows of `source` one read asks for (READ_BYTES at 8 bytes per key and column)."""
    return max(1, READ_BYTES // (8 * (1 + len(source.columns))))


def owner_of(source: Source) -> str:
    return source.pair if isinstance(source, TargetsTable) else source.owner


def expected_schema(source: Source) -> pa.Schema:
    """The checkpoint schema of a table: the key, then its catalog columns in ordinal order."""
    return pa.schema(
        [pa.field(KEY, KEY_TYPE, nullable=False)]
        + [pa.field(c.name, ARROW_TYPES[c.dtype]) for c in source.columns]
    )


def schema_fingerprint(schema: pa.Schema) -> str:
    """A short hash of column names and types (nullability and metadata ignored)."""
    text = "\n".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _window_text(window: DateRange) -> list[str | None]:
    return [w.isoformat() if w else None for w in (window.start, window.end)]


class JsonRecord:
    """A frozen dataclass stored as JSON beside what it describes (checkpoints, chunks)."""

    def to_json(self) -> bytes:
        # The fields as they are (`asdict` deep-copies every nested list and dict first): the
        # same JSON text.
        return json.dumps(self.record(), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self | None:
        try:
            return cls.from_record(json.loads(data))
        except ValueError:
            return None  # an unreadable manifest means what it describes is redone

    @classmethod
    def from_record(cls, record: Any) -> Self | None:
        """From the JSON object `to_json` writes, already parsed; None when it is not one."""
        try:
            return cls(**record)
        except TypeError:
            return None

    def record(self) -> dict[str, Any]:
        """The fields as `to_json` writes them, not yet encoded."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Manifest(JsonRecord):
    """What a checkpoint holds and which source state it was made from."""

    table: str
    dataset: str
    rows: int
    schema_fingerprint: str
    source_last_modified: str
    source_rows: int
    window: list[str | None]
    bytes: int
    crc32c: str
    bytes_read: int
    key_min: str | None
    key_max: str | None
    format: int = MANIFEST_FORMAT
    method: str = "read"
    """How the rows left the warehouse: "read" (billed by bytes) or "export" (an extract job)."""


@dataclass(frozen=True)
class Checkpoint:
    """The outcome of extracting one table."""

    source: Source
    status: Literal["extracted", "reused"]
    manifest: Manifest
    seconds: float

    @property
    def family(self) -> str:
        return "targets" if isinstance(self.source, TargetsTable) else self.source.family


def current_manifest(
    storage: Storage, source: Source, state: SourceState, window: DateRange
) -> Manifest | None:
    """The checkpoint's manifest if the checkpoint can be reused as it is, else None.

    Reuse needs: a readable manifest made from the same source state (last-modified time and
    rows), schema and window, and a stored file whose size and CRC32C match the manifest.
    """
    manifest = verified_manifest(storage, source)
    if (
        manifest is None
        or manifest.format != MANIFEST_FORMAT
        or manifest.source_last_modified != state.last_modified
        or manifest.source_rows != state.rows
        or manifest.schema_fingerprint != schema_fingerprint(expected_schema(source))
        or manifest.window != _window_text(window)
    ):
        return None
    return manifest


def verified_manifest(storage: Storage, source: Source) -> Manifest | None:
    """The checkpoint's manifest when the stored file's size and CRC32C match it, else None."""
    owner = owner_of(source)
    raw = storage.read_bytes(manifest_key(owner, source.name))
    manifest = Manifest.from_json(raw) if raw is not None else None
    if manifest is None:
        return None
    info = storage.stat(checkpoint_key(owner, source.name))
    if info is None or info.size != manifest.bytes or info.crc32c != manifest.crc32c:
        return None
    return manifest


def conform(data: pa.Table, source: Source) -> pa.Table:
    """Check and normalise a table read from the warehouse against the catalog.

    Keys become timestamp[us, UTC] (a unit or zone mix-up never turns into 1970 dates), rows are
    sorted by key, and duplicate keys, missing or mistyped columns are errors naming the table.
    """
    where = f"{source.dataset}.{source.name}"
    data, keys = by_key(data, where, ExtractionError)
    expected = expected_schema(source)
    present = set(data.column_names)
    missing = [name for name in expected.names if name not in present]
    if missing:
        raise ExtractionError(f"{where} lacks catalog columns {missing[:10]}")
    data = data.select(expected.names)
    # Compared per Field only when the types differ: iterating a schema makes a Field per column.
    same_types = data.schema.types == expected.types
    if not same_types:
        for field, actual in zip(expected, data.schema.types, strict=True):
            if actual != field.type and not (
                pa.types.is_large_string(actual) and field.type == pa.string()
            ):
                raise ExtractionError(
                    f"{where}.{field.name} is {actual}, the catalog says {field.type}"
                )
    check_unique(keys, where, ExtractionError)
    if same_types:
        # The columns as they are under the catalog's schema (its key not nullable: `keys_us`
        # found no null): what `cast` gives, without a cast kernel per column.
        return pa.Table.from_arrays(data.columns, schema=expected)
    return data.cast(expected)


def write_checkpoint(data: pa.Table, path: Path, row_group_rows: int) -> pq.FileMetaData:
    """Write `data` as a checkpoint file at `path`; returns the file's footer as written."""
    # Dictionary encoding only for strings (constant labels): trying it on float features costs
    # ~40% of the write for pages that fall back to plain encoding anyway.
    # Floats in BYTE_STREAM_SPLIT: smaller after zstd and ~3x faster for the merge to decode.
    # Names and types as two lists: iterating the schema makes a Field object per column.
    columns = list(zip(data.schema.names, data.schema.types, strict=True))
    strings = [name for name, kind in columns if pa.types.is_string(kind)]
    floats = [name for name, kind in columns if pa.types.is_floating(kind)]
    writer = pq.ParquetWriter(
        path,
        data.schema,
        compression=CHECKPOINT_COMPRESSION,
        use_dictionary=strings,
        use_byte_stream_split=floats,
        write_statistics=True,
    )
    try:
        writer.write_table(data, row_group_size=row_group_rows)
    except BaseException:
        # The write's own error (a full disk, say) is the one raised, not the close's.
        with contextlib.suppress(Exception):
            writer.close()
        raise
    writer.close()
    return writer.writer.metadata


def extract_table(
    warehouse: Warehouse,
    source: Source,
    storage: Storage,
    *,
    window: DateRange = ALL_TIME,
    workdir: Path | None = None,
    row_group_rows: int = CHECKPOINT_ROW_GROUP_ROWS,
    state: SourceState | None = None,
    mode: ExtractMode = "read",
    staging_uri: str | None = None,
) -> Checkpoint:
    """Checkpoint one table, or reuse its checkpoint when that is still current (`state`: the
    table's state when the caller already looked it up).

    `mode="export"` takes a whole table (an unbounded window) through the warehouse's export to
    `staging_uri` where it has one, which bills no bytes; a windowed table, or a warehouse
    without an export, is read as in `mode="read"`.
    """
    if mode not in EXTRACT_MODES:
        raise ExtractionError(f"extraction mode {mode!r} is not one of {', '.join(EXTRACT_MODES)}")
    clock = Stopwatch()
    state = state or warehouse.state(source.dataset, source.name)
    manifest = current_manifest(storage, source, state, window)
    if manifest is not None:
        return Checkpoint(source, "reused", manifest, clock.seconds)

    names = expected_schema(source).names
    read: TableRead | None = None
    # An extract job copies the whole table: a window could only be applied afterwards, so a
    # windowed table is read (the read's row restriction bills only the window's bytes).
    if mode == "export" and window == ALL_TIME:
        if not staging_uri:
            raise ExtractionError(
                f"{source.dataset}.{source.name}: export mode needs a staging URI"
            )
        read = warehouse.export_table(source.dataset, source.name, names, staging_uri)
    method = "read" if read is None else "export"
    if read is None:
        read = warehouse.read(source.dataset, source.name, names, window)
    data = conform(read.data, source)
    if data.num_rows == 0:
        raise ExtractionError(
            f"{source.dataset}.{source.name} has no rows in the window {_window_text(window)}"
        )
    owner = owner_of(source)
    local = Path(workdir or tempfile.gettempdir()) / f".{source.name}.{uuid.uuid4().hex}.parquet"
    try:
        write_checkpoint(data, local, row_group_rows)
        # The file is published first, the manifest last: a file without a current manifest is
        # never reused, so a run killed in between redoes this table.
        info = storage.put_file(local, checkpoint_key(owner, source.name), move=True)
    finally:
        local.unlink(missing_ok=True)
    keys = data.column(KEY)
    manifest = Manifest(
        table=source.name,
        dataset=source.dataset,
        rows=data.num_rows,
        schema_fingerprint=schema_fingerprint(data.schema),
        source_last_modified=state.last_modified,
        source_rows=state.rows,
        window=_window_text(window),
        bytes=info.size,
        crc32c=info.crc32c,
        bytes_read=read.bytes_read,
        key_min=key_text(keys[0].value),  # `as_py` of an aware timestamp imports pandas
        key_max=key_text(keys[-1].value),
        method=method,
    )
    storage.write_bytes(manifest_key(owner, source.name), manifest.to_json())
    return Checkpoint(source, "extracted", manifest, clock.seconds)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    extracted: int
    reused: int
    megabytes: float
    seconds: float

    def line(self) -> str:
        rate = self.megabytes / self.seconds if self.seconds else 0.0
        return (
            f"checkpoints {self.done}/{self.total} ({self.extracted} extracted, {self.reused} "
            f"reused), {self.megabytes:.1f} MB, {rate:.1f} MB/s"
        )


def extract_tables(
    warehouse: Warehouse,
    sources: Sequence[Source],
    storage: Storage,
    *,
    window: DateRange = ALL_TIME,
    threads: int = 4,
    workdir: Path | None = None,
    row_group_rows: int = CHECKPOINT_ROW_GROUP_ROWS,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 50,
    mode: ExtractMode = "read",
    staging_uri: str | None = None,
) -> list[Checkpoint]:
    """Checkpoint many tables on a bounded thread pool.

    A table that fails does not stop the others: every other checkpoint is still written, then
    one ExtractionError names every failed table and its reason.
    """
    clock = Stopwatch()
    counts = {"extracted": 0, "reused": 0, "bytes": 0}
    # One look-up per dataset instead of one per table; a table missing here is looked up
    # again on its own, which fails naming it.
    states: dict[tuple[str, str], SourceState] = {}
    for dataset in sorted({s.dataset for s in sources}):
        names = [s.name for s in sources if s.dataset == dataset]
        states.update({(dataset, n): st for n, st in warehouse.states(dataset, names).items()})

    def one(source: Source) -> Checkpoint:
        return extract_table(
            warehouse, source, storage, window=window, workdir=workdir,
            row_group_rows=row_group_rows, state=states.get((source.dataset, source.name)),
            mode=mode, staging_uri=staging_uri,
        )  # fmt: skip

    def count(checkpoint: Checkpoint) -> None:
        counts[checkpoint.status] += 1
        counts["bytes"] += checkpoint.manifest.bytes

    def tick(done: int) -> None:
        if progress and (done % progress_every == 0 or done == len(sources)):
            progress(Progress(done, len(sources), counts["extracted"], counts["reused"],
                              counts["bytes"] / 1e6, clock.seconds))  # fmt: skip

    return for_each_table(sources, one, threads=threads, what="extraction",
                          kept="checkpoints", on_done=count, tick=tick)  # fmt: skip


def for_each_table(
    sources: Sequence[Source],
    job: Callable[[Source], T],
    *,
    threads: int,
    what: str,
    kept: str,
    on_done: Callable[[T], None],
    tick: Callable[[int], None],
) -> list[T]:
    """`job` for every table on a bounded thread pool, results in `sources` order. A table that
    fails does not stop the others: once all have run, one ExtractionError names the failed
    tables (the first ten) and their reasons. `on_done` and `tick` (tables finished so far) run
    on the calling thread."""
    results: dict[str, T] = {}
    failures: dict[str, str] = {}
    memory = MemoryReturn()

    def one(source: Source) -> T:
        try:
            return job(source)
        finally:
            memory.after_table()  # the table's buffers are freed: RSS back to what is in use

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix=what) as pool:
        futures = {pool.submit(one, s): s for s in sources}
        for future in as_completed(futures):
            source = futures[future]
            try:
                result = future.result()
            except BqxError as exc:
                failures[source.name] = str(exc)
                log.error("%s of %s failed: %s", what, source.name, exc)
            else:
                results[source.name] = result
                on_done(result)
            tick(len(results) + len(failures))
    if failures:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(failures.items())[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise ExtractionError(
            f"{len(failures)} of {len(sources)} tables failed, the other {kept} are kept: "
            f"{listed}{more}"
        )
    return [results[s.name] for s in sources]


def missing_checkpoints(storage: Storage, sources: Sequence[Source]) -> list[str]:
    """Tables without a stored checkpoint whose size and checksum match its manifest."""
    return [s.name for s in sources if verified_manifest(storage, s) is None]


def require_checkpoints(storage: Storage, sources: Sequence[Source], what: str) -> None:
    """Fail naming every table of `what` that lacks a verified checkpoint: an extraction never
    counts as done with fewer checkpoints than the catalog has tables."""
    if not sources:
        raise ExtractionError(f"{what}: the catalog lists no tables to extract")
    missing = missing_checkpoints(storage, sources)
    if missing:
        raise ExtractionError(
            f"{what}: {len(missing)} of {len(sources)} tables have no verified checkpoint: "
            + ", ".join(missing[:20])
            + (" ..." if len(missing) > 20 else "")
        )
