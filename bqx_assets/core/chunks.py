"""Chunked checkpoints: a table as date-range chunks aligned to its day partitions, each verified
against its own manifest, so that a refresh re-extracts only the chunks whose days changed."""

# Grain, and why
# --------------
# Production tables are partitioned by DATE(interval_time) and grow by a trading day at a time;
# BigQuery reports each day's rows and last change (INFORMATION_SCHEMA.PARTITIONS). A chunk is a
# run of days of one table with a manifest of the partition states it was made from; it is reused
# while those states are unchanged, else read again with the read restricted to its range.
#
# GRAIN "month" (the default) cuts the days of closed months into one chunk per calendar month
# and the newest month of the table (the one still filling) into one chunk per day. An appended
# day therefore costs one day of reading (plus the day it continues, when the previous load
# ended mid-day), while a table holds one file per month plus the newest month's days (~30 files
# at production's 177,748 rows instead of ~125 per-day files): every file costs the merge a
# footer and a key-column read, and GCS a request each. When a month closes, its day chunks are
# concatenated into the month's chunk from the checkpoints themselves, without reading the
# warehouse. GRAIN "day" keeps one chunk per day everywhere (same refresh cost, more files).
#
# A run of neighbouring chunks to (re-)extract is read in one warehouse read and split by chunk:
# a from-scratch build costs one read per table, as before, not one per day; a wide table's run
# is cut into reads of at most extraction.READ_BYTES (a chunk at least) so that memory per
# extraction thread is bounded by a read, not by the table.
#
# The training window is fixed (start/end: chunks are cut to it) or rolling, the newest N
# trading days (days with rows in the pair's targets table). A rolling window moves a day at a
# time, so cutting chunks at its start would re-read the cut month of every table every day.
# Instead a feature table's chunks are planned from the start of the chunk holding the window's
# first day (a month start, or that day in a table's newest month) and those that end before it
# are left out: the first chunk stays whole, its rows before the window are read once and
# dropped by the merge's join on the spine. The spine (targets) is cut into day chunks, so that
# it holds exactly the window's days and a moved window reuses every day it kept. The window is
# resolved from the warehouse's partitions once per checkpoint step (every table of a pair, or
# every shared table, with the same window), and the merge takes it from the spine's stored
# chunks, i.e. the window those checkpoints were made for, not the warehouse's newer state.

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import hashlib
import itertools
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog, TargetsTable
from bqx_assets.core.errors import BqxError, ExtractionError, StorageError, WindowError
from bqx_assets.core.extraction import (
    ALL_TIME,
    EXTRACT_MODES,
    ExtractMode,
    JsonRecord,
    Source,
    conform,
    expected_schema,
    for_each_table,
    owner_of,
    rows_per_read,
    schema_fingerprint,
    write_checkpoint,
)
from bqx_assets.core.keys import key_text, keys_us
from bqx_assets.core.layout import (
    CHECKPOINT_ROW_GROUP_ROWS,
    KEY,
    chunk_folder,
    chunk_index_key,
    chunk_key,
    chunk_manifest_key,
)
from bqx_assets.core.merge import (
    FeatureSource,
    Input,
    MergeReport,
    PartFacts,
    PartId,
    VouchedFile,
    merge_checkpoints,
    sources_for_pair,
)
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage import ObjectInfo, ObjectStorage, StagedUpload, Storage
from bqx_assets.core.warehouse import DateRange, PartitionState, TableRead, Warehouse

log = logging.getLogger(__name__)

ChunkGrain = Literal["month", "day"]
CHUNK_GRAINS: tuple[ChunkGrain, ...] = ("month", "day")
DEFAULT_GRAIN: ChunkGrain = "month"
CHUNK_FORMAT = 1
ChunkStatus = Literal["extracted", "reused", "compacted"]
_MANIFEST_SUFFIX = ".manifest.json"
_INDEX_FORMAT = 1
_LISTING_THREADS = 8


_ONE_DAY = timedelta(days=1)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class ChunkRange:
    """Days `first`..`last` (calendar bounds) of a table, read as `start <= key < end`: the
    days' span cut to the training window."""

    first: date
    last: date
    start: datetime
    end: datetime

    @property
    def window(self) -> DateRange:
        return DateRange(self.start, self.end)

    @property
    def window_text(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]

    @property
    def whole(self) -> bool:
        """True when the window does not cut the chunk's days (its rows are the days' rows)."""
        return self.start == _day_start(self.first) and self.end == _day_start(
            self.last + timedelta(days=1)
        )

    def holds(self, day: date) -> bool:
        return self.first <= day <= self.last


def _in_window(day: date, window: DateRange) -> bool:
    start, end = _day_start(day), _day_start(day + timedelta(days=1))
    return (window.start is None or end > _utc(window.start)) and (
        window.end is None or start < _utc(window.end)
    )


def _clip(first: date, last: date, window: DateRange) -> ChunkRange:
    start, end = _day_start(first), _day_start(last + timedelta(days=1))
    if window.start is not None:
        start = max(start, _utc(window.start))
    if window.end is not None:
        end = min(end, _utc(window.end))
    return ChunkRange(first, last, start, end)


def _month_bounds(day: date) -> tuple[date, date]:
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def chunk_ranges(
    days: Sequence[date],
    window: DateRange,
    grain: ChunkGrain = DEFAULT_GRAIN,
    after: datetime | None = None,
) -> list[ChunkRange]:
    """The chunks of a table whose partitions are `days`, within `window`, in key order: with
    grain "month", a chunk per calendar month before the newest month and one per day of the
    newest; with grain "day", one per day. With `after` (a rolling window's first day), the
    chunks that end at or before it are left out."""
    if grain not in CHUNK_GRAINS:
        raise ExtractionError(f"chunk grain {grain!r} is not one of {', '.join(CHUNK_GRAINS)}")
    inside = sorted(_days_in_window(days, window))
    if not inside:
        return []
    newest = (inside[-1].year, inside[-1].month)
    out: dict[tuple[date, date], ChunkRange] = {}
    month: tuple[int, int] | None = None
    for day in inside:
        if grain == "day" or (day.year, day.month) == newest:
            out[(day, day)] = _clip(day, day, window)
        elif (day.year, day.month) != month:  # days are in order: a month's first one
            month = (day.year, day.month)
            first, last = _month_bounds(day)
            out[(first, last)] = _clip(first, last, window)
    return [r for r in out.values() if after is None or _utc(r.end) > _utc(after)]


def _days_in_window(days: Iterable[date], window: DateRange) -> set[date]:
    """The distinct `days` with a moment inside `window` (as `_in_window`, bounds computed once:
    a table at production length has ~150 days, a refresh ~670 tables)."""
    distinct = set(days)
    if window.start is None and window.end is None:
        return distinct
    start = _utc(window.start) if window.start is not None else None
    end = _utc(window.end) if window.end is not None else None
    return {
        d
        for d in distinct
        if (start is None or _day_start(d + _ONE_DAY) > start)
        and (end is None or _day_start(d) < end)
    }


@dataclass(frozen=True)
class TrainingWindow:
    """The training window as configured: fixed bounds (rows with `start <= key < end`), or the
    newest `days` trading days (days with rows in a pair's targets table) before `end`."""

    start: datetime | None = None
    end: datetime | None = None
    days: int | None = None

    def __post_init__(self) -> None:
        if self.days is not None and self.start is not None:
            raise WindowError(
                f"the training window has both a start ({self.start.isoformat()}) and a rolling "
                f"length ({self.days} trading days), whose start is derived from the warehouse: "
                "set one of them (BQX_WINDOW_START or BQX_WINDOW_DAYS), not both"
            )
        if self.days is not None and self.days < 1:
            raise WindowError(f"a rolling training window needs at least 1 day, not {self.days}")

    @classmethod
    def parse(
        cls, start: str | None = None, end: str | None = None, days: int | None = None
    ) -> TrainingWindow:
        """From settings' text: ISO dates or times, read as UTC."""

        def when(text: str | None, what: str) -> datetime | None:
            try:
                return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None
            except ValueError:
                raise WindowError(f"window {what} {text!r} is not an ISO date or time") from None

        return cls(when(start, "start"), when(end, "end"), days)

    @property
    def rolling(self) -> bool:
        return self.days is not None

    def describe(self) -> str:
        end = f" before {self.end.isoformat()}" if self.end else ""
        if self.rolling:
            return f"the last {self.days} trading days{end}"
        return f"{_window_list(DateRange(self.start, self.end))}"


@dataclass(frozen=True)
class TableWindow:
    """How one table's chunks are planned and chosen: its rows in `window`, cut into chunks of
    `grain`; with `after` (a rolling window's first day) the chunks that end at or before it
    are out of the window."""

    window: DateRange
    grain: ChunkGrain = DEFAULT_GRAIN
    after: datetime | None = None


@dataclass(frozen=True)
class ResolvedWindow:
    """A training window as one run uses it: `training` bounds the training file's rows. A
    fixed window cuts every table's chunks to it; a rolling one (`rolling`) cuts the spine into
    day chunks and plans feature tables' chunks from the start of the chunk holding its first
    day (see the notes at the top)."""

    training: DateRange
    rolling: bool = False

    def for_table(self, spine: bool, grain: ChunkGrain = DEFAULT_GRAIN) -> TableWindow:
        """The chunk window of the spine (targets) table or of a feature table."""
        start = self.training.start
        if not self.rolling or start is None:
            return TableWindow(self.training, grain)
        if spine:
            return TableWindow(self.training, "day")
        first = _utc(start).date()
        aligned = _day_start(first.replace(day=1)) if grain == "month" else _day_start(first)
        return TableWindow(DateRange(aligned, self.training.end), grain, after=start)


Window = DateRange | ResolvedWindow
"""What refresh and merge take: a date range cutting every table alike, or a resolved window."""


def table_window(window: Window, source: Source, grain: ChunkGrain = DEFAULT_GRAIN) -> TableWindow:
    if isinstance(window, DateRange):
        return TableWindow(window, grain)
    return window.for_table(isinstance(source, TargetsTable), grain)


def _newest_days_start(days: Sequence[date], window: TrainingWindow, where: str) -> datetime:
    """The first of the newest `window.days` days with rows (before `window.end`)."""
    end = _utc(window.end) if window.end is not None else None
    eligible = sorted(d for d in set(days) if end is None or _day_start(d) < end)
    if not eligible:
        raise WindowError(f"{where} has no day with rows for {window.describe()}")
    return _day_start(eligible[-(window.days or 1) :][0])


def resolve_window(
    warehouse: Warehouse, spines: Sequence[TargetsTable], window: TrainingWindow
) -> ResolvedWindow:
    """The window a run uses: a fixed one as it is; a rolling one from the day partitions of the
    pairs' targets tables `spines` (one look-up per dataset), starting at the earliest of their
    windows' first days (the shared tables serve every pair). A pair whose targets table is
    missing is left out (its own step fails naming it); none found is a WindowError."""
    if not window.rolling:
        return ResolvedWindow(DateRange(window.start, window.end))
    if not warehouse.reports_partitions:
        raise WindowError(
            f"{window.describe()}: the {warehouse.name} warehouse reports no day partitions to "
            "count trading days in; set a fixed window start instead"
        )
    if not spines:
        raise WindowError(f"{window.describe()}: no targets table to count trading days in")
    starts, missing = [], []
    for dataset in sorted({t.dataset for t in spines}):
        names = sorted(t.name for t in spines if t.dataset == dataset)
        found = warehouse.partition_states(dataset, names)
        missing += [f"{dataset}.{n}" for n in names if n not in found]
        for name in (n for n in names if n in found):
            days = [p.day for p in found[name] if p.rows > 0]
            starts.append(_newest_days_start(days, window, f"{dataset}.{name}"))
    if not starts:
        raise WindowError(
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: not found in the "
            f"warehouse, whose days the rolling training window ({window.describe()}) counts"
        )
    return ResolvedWindow(DateRange(min(starts), window.end), rolling=True)


def _partition_text(states: Sequence[PartitionState]) -> dict[str, list[int | str]]:
    return {s.day.isoformat(): [s.rows, s.last_modified] for s in states}


@dataclass(frozen=True)
class ChunkManifest(JsonRecord):
    """What one chunk holds and the partition states it was made from."""

    table: str
    dataset: str
    first: str
    last: str
    window: list[str]
    """[start, end) of the rows read, ISO-8601 UTC."""
    partitions: dict[str, list[int | str]]
    """Per day: [rows, last-modified] of the source partitions when the chunk was made."""
    rows: int
    schema_fingerprint: str
    bytes: int
    crc32c: str
    bytes_read: int
    """This chunk's share of the warehouse bytes of the read that produced it (0: compacted)."""
    key_min: str | None
    key_max: str | None
    format: int = CHUNK_FORMAT
    method: str = "read"
    """"read" (a restricted read), "export" (from an export of the whole table, not billed)
    or "compacted" (concatenated from day chunks)."""
    facts: dict[str, Any] | None = None
    """What the merge plans the chunk from without opening it (`merge.PartFacts`): its row
    groups' rows, its columns' types and null cells, its keys. None in manifests written
    before they were recorded: the merge then reads the chunk's footer and key column."""

    @property
    def range(self) -> ChunkRange:
        return ChunkRange(
            date.fromisoformat(self.first),
            date.fromisoformat(self.last),
            datetime.fromisoformat(self.window[0]),
            datetime.fromisoformat(self.window[1]),
        )


@dataclass(frozen=True)
class Chunk:
    status: ChunkStatus
    manifest: ChunkManifest
    stored: ObjectInfo | None = field(default=None, compare=False)
    """Its manifest file as just written (size, CRC32C), for the table's chunk index."""

    def key(self, owner: str) -> str:
        m = self.manifest
        return chunk_key(owner, m.table, date.fromisoformat(m.first), date.fromisoformat(m.last))


@dataclass(frozen=True)
class ChunkedCheckpoint:
    """The outcome of refreshing one table: its chunks for the window, in key order."""

    source: Source
    chunks: tuple[Chunk, ...]
    seconds: float

    @property
    def family(self) -> str:
        return getattr(self.source, "family", "targets")

    def count(self, status: ChunkStatus) -> int:
        return sum(c.status == status for c in self.chunks)

    @property
    def bytes_read(self) -> int:
        return sum(c.manifest.bytes_read for c in self.chunks if c.status == "extracted")

    @property
    def rows(self) -> int:
        return sum(c.manifest.rows for c in self.chunks)

    @property
    def bytes(self) -> int:
        return sum(c.manifest.bytes for c in self.chunks)

    @property
    def status(self) -> Literal["extracted", "reused"]:
        """ "reused" when no chunk was read from the warehouse."""
        return "extracted" if self.count("extracted") else "reused"


@dataclass(frozen=True)
class _Stored:
    """A table's stored chunks as its folder lists them: each readable manifest by its chunk's
    key, and the size and CRC32C of every object in the folder (from one listing)."""

    manifests: dict[str, ChunkManifest]
    infos: dict[str, ObjectInfo]
    index: dict[str, tuple[int, str]]
    """The chunk index as it was read: (size, CRC32C) of each manifest it copies, by key."""
    read: int
    """Manifests read on their own: not in the index, or changed since it was written."""

    def verified(self, key: str, manifest: ChunkManifest) -> bool:
        """Whether the chunk at `key` is the file its manifest describes (size and CRC32C)."""
        info = self.infos.get(key)
        return info is not None and info.size == manifest.bytes and info.crc32c == manifest.crc32c


def _index_entries(raw: bytes | None) -> dict[str, tuple[int, str, Any]]:
    """A chunk index's entries: (size, CRC32C, manifest record) by manifest key; none from an
    index that cannot be read (its manifests are then read one by one)."""
    try:
        data = json.loads(raw) if raw is not None else None
        if not isinstance(data, dict) or data.get("format") != _INDEX_FORMAT:
            return {}
        return {
            key: (int(entry["bytes"]), str(entry["crc32c"]), entry["manifest"])
            for key, entry in data["manifests"].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def _stored_manifests(storage: Storage, source: Source) -> _Stored:
    """Every readable chunk manifest of a table, by its chunk's key: from one listing of its
    folder and its chunk index, reading on their own only the manifests that the index does
    not hold as they are now (on GCS ~23 requests a table fewer at production length)."""
    owner = owner_of(source)
    infos = storage.infos(chunk_folder(owner, source.name))
    index_key = chunk_index_key(owner, source.name)
    entries = _index_entries(storage.read_bytes(index_key)) if index_key in infos else {}
    manifests, read = {}, 0
    for key, info in infos.items():
        if not key.endswith(_MANIFEST_SUFFIX):
            continue
        entry = entries.get(key)
        if entry is not None and (entry[0], entry[1]) == (info.size, info.crc32c):
            manifest = ChunkManifest.from_record(entry[2])
        else:
            raw = storage.read_bytes(key)
            manifest = ChunkManifest.from_json(raw) if raw is not None else None
            read += 1
        if manifest is not None:
            manifests[key.removesuffix(_MANIFEST_SUFFIX) + ".parquet"] = manifest
    index = {key: (entry[0], entry[1]) for key, entry in entries.items()}
    return _Stored(manifests, infos, index, read)


def _write_index(
    storage: Storage,
    source: Source,
    known: dict[str, ChunkManifest],
    before: _Stored,
    written: dict[str, ObjectInfo],
) -> None:
    """Write the table's chunk index from the manifests its folder holds now (`known`: their
    content, by chunk key), unless it already says what it would. Their files' sizes and
    checksums are those listed before this run (`before`) or written by it (`written`, by
    manifest key); the folder is listed again only when some manifest is in neither."""
    owner = owner_of(source)
    infos = {**before.infos, **written}
    manifest_keys = [k.removesuffix(".parquet") + _MANIFEST_SUFFIX for k in known]
    if any(k not in infos for k in manifest_keys):
        infos = storage.infos(chunk_folder(owner, source.name))
    entries = {}
    for key, manifest in known.items():
        manifest_key = key.removesuffix(".parquet") + _MANIFEST_SUFFIX
        info = infos.get(manifest_key)
        if info is not None:
            entries[manifest_key] = (info.size, info.crc32c, manifest)
    if {k: (e[0], e[1]) for k, e in entries.items()} == before.index:
        return
    record = {
        "format": _INDEX_FORMAT,
        "manifests": {
            k: {"bytes": e[0], "crc32c": e[1], "manifest": e[2].record()}
            for k, e in sorted(entries.items())
        },
    }
    storage.write_bytes(
        chunk_index_key(owner, source.name), json.dumps(record, separators=(",", ":")).encode()
    )


def _current(
    manifest: ChunkManifest | None,
    planned: ChunkRange,
    partitions: dict[str, list[int | str]],
    fingerprint: str,
) -> bool:
    """A chunk made from the same partition states, schema and window as planned now."""
    return (
        manifest is not None
        and manifest.format == CHUNK_FORMAT
        and manifest.window == planned.window_text
        and manifest.schema_fingerprint == fingerprint
        and manifest.partitions == partitions
    )


@dataclass
class _Plan:
    chunk: ChunkRange
    partitions: dict[str, list[int | str]]
    done: Chunk | None = None
    parts: list[tuple[str, ChunkManifest]] = field(default_factory=list)
    """Stored current chunks that together make this one (a closed month's day chunks)."""


def clear_temporaries(storage: Storage, source: Source, workdir: Path | None = None) -> int:
    """Delete the temporary files a killed writer of this table left: in its chunk folder and
    in the local work folder. Only one writer runs per table (one step per pair; shared tables
    in one step), so a temporary file found before writing is a dead writer's."""
    owner = owner_of(source)
    removed = 0
    for key in list(storage.temporaries(chunk_folder(owner, source.name))):
        storage.delete(key)
        removed += 1
    if workdir is not None and workdir.is_dir():
        pattern = f".{source.name}.*.tmp"
        # One scan of the folder (as `glob` with that pattern, without building a selector
        # per table).
        with os.scandir(workdir) as entries:
            names = [e.name for e in entries if fnmatch.fnmatchcase(e.name, pattern)]
        for path in (workdir / name for name in names):
            if not _writer_alive(path):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _writer_alive(path: Path) -> bool:
    """Whether the process that named this local temporary file (`...{pid}-{uuid}.tmp`) still
    runs: a work folder (the system's temporary folder by default) can be shared by the runs of
    other pairs on the same machine, and a cov table is written by either of its two pairs."""
    tag = path.name.removesuffix(".tmp").rsplit(".", 1)[-1]
    pid_text, _, _ = tag.partition("-")
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def refresh_table(
    warehouse: Warehouse,
    source: Source,
    storage: Storage,
    partitions: Sequence[PartitionState],
    *,
    window: DateRange = ALL_TIME,
    grain: ChunkGrain = DEFAULT_GRAIN,
    after: datetime | None = None,
    workdir: Path | None = None,
    row_group_rows: int = CHECKPOINT_ROW_GROUP_ROWS,
    mode: ExtractMode = "read",
    staging_uri: str | None = None,
) -> ChunkedCheckpoint:
    """Bring a table's chunks for `window` up to date with its `partitions` (the table's
    per-day states): chunks made from the same states are reused after verification (size and
    CRC32C against their manifest), the others read again, the read restricted to their range.
    With `after` (a rolling window's first day), chunks ending at or before it are not made.

    Each chunk's file is published before its manifest: a run killed in between redoes only
    the chunks without a current manifest. Chunks replaced by this layout are deleted last.

    `mode="export"` takes the rows of chunks to redo from the warehouse's export of the whole
    table to `staging_uri` (not billed as a scan, but the whole table every time) where it has
    one; otherwise they are read, restricted to their range, as with `mode="read"`."""
    if mode not in EXTRACT_MODES:
        raise ExtractionError(f"extraction mode {mode!r} is not one of {', '.join(EXTRACT_MODES)}")
    if mode == "export" and not staging_uri:
        raise ExtractionError(f"{source.dataset}.{source.name}: export mode needs a staging URI")
    clock = Stopwatch()
    where = f"{source.dataset}.{source.name}"
    owner = owner_of(source)
    work = Path(workdir or tempfile.gettempdir())
    work.mkdir(parents=True, exist_ok=True)
    clear_temporaries(storage, source, work)
    fingerprint = schema_fingerprint(expected_schema(source))
    by_day = {p.day: p for p in partitions}
    ranges = chunk_ranges(list(by_day), window, grain, after)
    if not ranges:
        raise ExtractionError(f"{where} has no partitions in the window {_window_list(window)}")
    found = _stored_manifests(storage, source)
    days = sorted(by_day)
    plans = []
    for chunk in ranges:
        held = days[bisect.bisect_left(days, chunk.first) : bisect.bisect_right(days, chunk.last)]
        plan = _Plan(chunk, _partition_text([by_day[d] for d in held]))
        key = chunk_key(owner, source.name, chunk.first, chunk.last)
        manifest = found.manifests.get(key)
        if _current(manifest, chunk, plan.partitions, fingerprint) and found.verified(
            key, manifest
        ):
            plan.done = Chunk("reused", manifest)
        else:
            plan.parts = _parts_of(found, plan, window, fingerprint)
        plans.append(plan)

    for plan in plans:
        if plan.done is None and plan.parts:
            plan.done = _compact(storage, source, plan, work, row_group_rows)
    todo = [p for p in plans if p.done is None]
    exported = None
    if mode == "export" and staging_uri and todo:
        # An export is of the whole table: one for every chunk to redo, however far apart.
        names = expected_schema(source).names
        exported = warehouse.export_table(source.dataset, source.name, names, staging_uri)
    if exported is not None:
        _extract_run(warehouse, source, storage, todo, fingerprint, work, row_group_rows, exported)
    else:
        for run in _runs(plans, rows_per_read(source)):
            _extract_run(warehouse, source, storage, run, fingerprint, work, row_group_rows)

    # Chunks of this table that the new layout replaced (days now in a month chunk, chunks of
    # another grain or window) go, once every planned chunk is in place.
    keep = {chunk_key(owner, source.name, p.chunk.first, p.chunk.last) for p in plans}
    known = dict(found.manifests)
    for key, manifest in found.manifests.items():
        if key in keep:
            continue
        old = manifest.range
        if any(old.first <= p.chunk.last and old.last >= p.chunk.first for p in plans):
            storage.delete(key.removesuffix(".parquet") + _MANIFEST_SUFFIX)
            storage.delete(key)
            del known[key]
    chunks = tuple(p.done for p in plans if p.done is not None)
    changed = found.read or len(known) < len(found.manifests) or len(found.index) != len(known)
    if changed or any(c.status != "reused" for c in chunks):
        written = {}
        for c in chunks:
            key = c.key(owner)
            known[key] = c.manifest
            if c.stored is not None:
                written[key.removesuffix(".parquet") + _MANIFEST_SUFFIX] = c.stored
        _write_index(storage, source, known, found, written)
    if sum(c.manifest.rows for c in chunks) == 0:
        raise ExtractionError(f"{where} has no rows in the window {_window_list(window)}")
    return ChunkedCheckpoint(source, chunks, clock.seconds)


def _window_list(window: DateRange) -> list[str | None]:
    return [w.isoformat() if w else None for w in (window.start, window.end)]


def _parts_of(
    found: _Stored,
    plan: _Plan,
    window: DateRange,
    fingerprint: str,
) -> list[tuple[str, ChunkManifest]]:
    """Stored chunks that hold exactly this chunk's days as they are now (a closed month's day
    chunks), or [] when they do not cover it all."""
    if plan.chunk.first == plan.chunk.last:
        return []
    parts = []
    for key, manifest in found.manifests.items():
        old = manifest.range
        if not (plan.chunk.first <= old.first and old.last <= plan.chunk.last):
            continue
        if old.first == plan.chunk.first and old.last == plan.chunk.last:
            continue  # this chunk itself, not current
        expect = _clip(old.first, old.last, window)
        mine = {d: s for d, s in plan.partitions.items() if old.holds(date.fromisoformat(d))}
        if _current(manifest, expect, mine, fingerprint) and found.verified(key, manifest):
            parts.append((key, manifest))
    parts.sort(key=lambda p: p[1].first)
    covered = [d for _, m in parts for d in m.partitions]
    if sorted(covered) != sorted(plan.partitions):
        return []
    return parts


def _compact(
    storage: Storage, source: Source, plan: _Plan, work: Path, row_group_rows: int
) -> Chunk | None:
    """This chunk made by concatenating its stored parts (verified as they are read back), or
    None when a part cannot be read (the chunk is then read from the warehouse)."""
    tables = []
    for key, manifest in plan.parts:
        try:
            path = storage.fetch(key, work / "compact")
            tables.append(pq.read_table(path))
        except (BqxError, OSError, pa.ArrowException) as exc:
            log.warning("chunk %s cannot be compacted (%s): reading it again", key, exc)
            return None
        if tables[-1].num_rows != manifest.rows:
            return None
    data = pa.concat_tables(tables).combine_chunks()
    with contextlib.suppress(OSError):
        for key, _ in plan.parts:
            local = work / "compact" / key
            if storage.local_path(key) != local:
                local.unlink(missing_ok=True)
    fingerprint = schema_fingerprint(data.schema)
    return _publish(storage, source, plan, data, fingerprint, 0, work, row_group_rows, "compacted")


def _plan_rows(plan: _Plan) -> int:
    return sum(int(state[0]) for state in plan.partitions.values())


def _runs(plans: Sequence[_Plan], max_rows: int | None) -> list[list[_Plan]]:
    """The chunks to read, as runs of neighbouring chunks of at most `max_rows` rows by their
    partitions (a longer chunk is a run of its own): one read each, so that a read's memory is
    bounded by the larger of `max_rows` and a chunk, not by the table."""
    runs: list[list[_Plan]] = []
    rows, joined = 0, False
    for plan in plans:
        if plan.done is not None:
            joined = False
            continue
        n = _plan_rows(plan)
        if not joined or (max_rows is not None and rows + n > max_rows):
            runs.append([])
            rows = 0
        runs[-1].append(plan)
        rows, joined = rows + n, True
    return runs


def _extract_run(
    warehouse: Warehouse,
    source: Source,
    storage: Storage,
    run: Sequence[_Plan],
    fingerprint: str,
    work: Path,
    row_group_rows: int,
    exported: TableRead | None = None,
) -> None:
    """Read neighbouring chunks in one restricted read, or take the chunks from the table's
    `exported` rows, and publish each chunk's rows."""
    where = f"{source.dataset}.{source.name}"
    method: Literal["read", "export"] = "read" if exported is None else "export"
    read = exported
    if read is None:
        window = DateRange(run[0].chunk.start, run[-1].chunk.end)
        read = warehouse.read(source.dataset, source.name, expected_schema(source).names, window)
    data = conform(read.data, source)
    if schema_fingerprint(data.schema) != fingerprint:
        raise ExtractionError(f"{where}: schema differs from the catalog after conform")
    keys = keys_us(data.column(KEY), where, ExtractionError)
    total = max(1, data.num_rows)
    shared = 0
    for i, plan in enumerate(run):
        chunk = plan.chunk
        lo, hi = (
            int(np.searchsorted(keys, _micros(chunk.start))),
            int(np.searchsorted(keys, _micros(chunk.end))),
        )
        expected = _plan_rows(plan)
        if chunk.whole and hi - lo != expected:
            raise ExtractionError(
                f"{where}: days {chunk.first}..{chunk.last} have {hi - lo} rows, their partitions "
                f"say {expected}: the table changed while it was read; run the refresh again"
            )
        part = read.bytes_read * (hi - lo) // total
        if i == len(run) - 1:
            part = read.bytes_read - shared
        shared += part
        plan.done = _publish(
            storage, source, plan, data.slice(lo, hi - lo), fingerprint, part, work,
            row_group_rows, method, keys[lo:hi],
        )  # fmt: skip


def _micros(value: datetime) -> int:
    return int((_utc(value) - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _publish(
    storage: Storage,
    source: Source,
    plan: _Plan,
    data: pa.Table,
    fingerprint: str,
    bytes_read: int,
    work: Path,
    row_group_rows: int,
    method: Literal["read", "export", "compacted"],
    keys: np.ndarray | None = None,
) -> Chunk:
    """Write and store one chunk's rows `data` (whose schema's fingerprint is `fingerprint`;
    `keys`: its keys in microseconds where the caller has them), then its manifest."""
    owner = owner_of(source)
    chunk = plan.chunk
    where = f"{source.dataset}.{source.name}"
    local = work / f".{source.name}.{chunk.first}_{chunk.last}.{os.getpid()}-{uuid.uuid4().hex}.tmp"
    try:
        written = write_checkpoint(data, local, row_group_rows)
        # The file first, the manifest last: a file without a current manifest is redone.
        info = storage.put_file(
            local, chunk_key(owner, source.name, chunk.first, chunk.last), move=True
        )
    finally:
        local.unlink(missing_ok=True)
    column = data.column(KEY)
    micros = keys if keys is not None else keys_us(column, where, ExtractionError)
    manifest = ChunkManifest(
        table=source.name,
        dataset=source.dataset,
        first=chunk.first.isoformat(),
        last=chunk.last.isoformat(),
        window=chunk.window_text,
        partitions=plan.partitions,
        rows=data.num_rows,
        schema_fingerprint=fingerprint,
        bytes=info.size,
        crc32c=info.crc32c,
        bytes_read=bytes_read,
        # From the integer keys: a time-zone-aware scalar's `as_py` imports pandas.
        key_min=key_text(column[0].value) if len(column) else None,
        key_max=key_text(column[-1].value) if len(column) else None,
        method=method,
        facts=PartFacts.of(written, data, micros).to_json(),
    )
    stored = storage.write_bytes(
        chunk_manifest_key(owner, source.name, chunk.first, chunk.last), manifest.to_json()
    )
    return Chunk("compacted" if method == "compacted" else "extracted", manifest, stored)


@dataclass(frozen=True)
class RefreshProgress:
    done: int
    total: int
    chunks_extracted: int
    chunks_reused: int
    bytes_read: int
    seconds: float

    def line(self) -> str:
        return (
            f"tables {self.done}/{self.total}: chunks {self.chunks_extracted} extracted, "
            f"{self.chunks_reused} reused, {self.bytes_read / 1e6:.1f} MB read"
        )


def refresh_tables(
    warehouse: Warehouse,
    sources: Sequence[Source],
    storage: Storage,
    *,
    window: Window = ALL_TIME,
    grain: ChunkGrain = DEFAULT_GRAIN,
    threads: int = 4,
    workdir: Path | None = None,
    row_group_rows: int = CHECKPOINT_ROW_GROUP_ROWS,
    progress: Callable[[RefreshProgress], None] | None = None,
    progress_every: int = 50,
    mode: ExtractMode = "read",
    staging_uri: str | None = None,
) -> list[ChunkedCheckpoint]:
    """Refresh many tables' chunks on a bounded thread pool, with one partition look-up per
    dataset. A table that fails does not stop the others; then one ExtractionError names every
    failed table and its reason. A `ResolvedWindow` gives each table its chunk window
    (`ResolvedWindow.for_table`); a date range cuts every table alike."""
    clock = Stopwatch()
    states: dict[tuple[str, str], tuple[PartitionState, ...]] = {}
    for dataset in sorted({s.dataset for s in sources}):
        names = [s.name for s in sources if s.dataset == dataset]
        found = warehouse.partition_states(dataset, names)
        states.update({(dataset, n): st for n, st in found.items()})
    counts = {"extracted": 0, "reused": 0, "bytes": 0}

    def one(source: Source) -> ChunkedCheckpoint:
        found = states.get((source.dataset, source.name))
        if found is None:
            raise ExtractionError(
                f"{source.dataset}.{source.name}: not found in the warehouse (no partitions)"
            )
        mine = table_window(window, source, grain)
        return refresh_table(
            warehouse, source, storage, found, window=mine.window, grain=mine.grain,
            after=mine.after, workdir=workdir, row_group_rows=row_group_rows, mode=mode,
            staging_uri=staging_uri,
        )  # fmt: skip

    def count(done: ChunkedCheckpoint) -> None:
        counts["extracted"] += done.count("extracted")
        counts["reused"] += done.count("reused") + done.count("compacted")
        counts["bytes"] += done.bytes_read

    def tick(n: int) -> None:
        if progress and (n % progress_every == 0 or n == len(sources)):
            progress(RefreshProgress(n, len(sources), counts["extracted"], counts["reused"],
                                     counts["bytes"], clock.seconds))  # fmt: skip

    return for_each_table(sources, one, threads=threads, what="refresh", kept="chunks",
                          on_done=count, tick=tick)  # fmt: skip


def current_chunks(
    storage: Storage, source: Source, window: DateRange, after: datetime | None = None
) -> list[tuple[str, ChunkManifest]]:
    """The table's stored chunks inside `window` whose files match their manifests, in key
    order: what the merge reads for it. Chunks outside the window, or ending at or before
    `after` (a rolling window's first day), are not listed (not read).

    Raises ExtractionError naming the table when there are none, or when two overlap."""
    where = f"{source.dataset}.{source.name}"
    lo = _utc(window.start) if window.start else None
    hi = _utc(window.end) if window.end else None
    chosen = []
    found = _stored_manifests(storage, source)
    for key, manifest in found.manifests.items():
        r = manifest.range
        if (lo is not None and _utc(r.start) < lo) or (hi is not None and _utc(r.end) > hi):
            continue
        if after is not None and _utc(r.end) <= _utc(after):
            continue
        if not found.verified(key, manifest):
            raise ExtractionError(
                f"{where}: chunk {storage.uri_of(key)} does not match its manifest (changed or "
                "missing since extraction); re-run its checkpoint"
            )
        chosen.append((key, manifest))
    chosen.sort(key=lambda c: c[1].range.start)
    if not chosen:
        raise ExtractionError(f"{where}: no verified chunk in the window {_window_list(window)}")
    for (k1, a), (k2, b) in itertools.pairwise(chosen):
        if a.range.end > b.range.start:
            raise ExtractionError(f"{where}: chunks {k1} and {k2} overlap; re-run its checkpoint")
    return chosen


def require_chunks(
    storage: Storage,
    sources: Sequence[Source],
    window: Window,
    what: str,
    grain: ChunkGrain = DEFAULT_GRAIN,
) -> dict[str, list[tuple[str, ChunkManifest]]]:
    """Each table's chunks for `window` (as refreshed with `grain`) by name; fails naming every
    table without one."""
    if not sources:
        raise ExtractionError(f"{what}: the catalog lists no tables to extract")

    def chosen(source: Source) -> list[tuple[str, ChunkManifest]] | str:
        try:
            mine = table_window(window, source, grain)
            return current_chunks(storage, source, mine.window, mine.after)
        except ExtractionError as exc:
            return str(exc)

    # An object store's tables a few at a time: two or three requests each, latency-bound.
    with ThreadPoolExecutor(_LISTING_THREADS if isinstance(storage, ObjectStorage) else 1) as pool:
        found = dict(zip((s.name for s in sources), pool.map(chosen, sources), strict=True))
    out = {name: got for name, got in found.items() if not isinstance(got, str)}
    missing = {name: got for name, got in found.items() if isinstance(got, str)}
    if missing:
        names = list(missing)
        raise ExtractionError(
            f"{what}: {len(missing)} of {len(sources)} tables have no verified checkpoint: "
            + ", ".join(names[:20])
            + (" ..." if len(names) > 20 else "")
            + f" (first: {missing[names[0]]})"
        )
    return out


def chunk_inputs(
    storage: Storage,
    sources: Sequence[Source],
    window: Window,
    what: str,
    grain: ChunkGrain = DEFAULT_GRAIN,
) -> dict[str, tuple[Input, ...]]:
    """Each table's chunks for the merge, by name, in key order: a local root's files as they
    are; an object store's objects to be read in place, each pinned to the version whose size
    and CRC32C match its manifest. Fails naming every table without verified chunks."""
    return _opened(storage, require_chunks(storage, sources, window, what, grain))


def _opened(
    storage: Storage, chosen: dict[str, list[tuple[str, ChunkManifest]]]
) -> dict[str, tuple[Input, ...]]:
    if not isinstance(storage, ObjectStorage):
        return {
            name: tuple(_local(storage, key) for key, _ in chunks)
            for name, chunks in chosen.items()
        }

    def open_one(item: tuple[str, ChunkManifest]) -> Input:
        key, manifest = item
        try:
            return storage.open_stored(key, size=manifest.bytes, crc32c=manifest.crc32c)
        except StorageError as exc:
            raise ExtractionError(f"table {manifest.table}: {exc}") from exc

    every = [item for chunks in chosen.values() for item in chunks]
    with ThreadPoolExecutor(_LISTING_THREADS) as pool:  # a few small requests each
        opened = iter(pool.map(open_one, every))
        return {name: tuple(next(opened) for _ in chunks) for name, chunks in chosen.items()}


@dataclass(frozen=True)
class PairInputs:
    """What the merge reads for a pair: its spine (the targets table's chunks), the spine's
    target columns and each feature table's chunks, in catalog order."""

    spine: tuple[Input, ...]
    spine_columns: tuple[str, ...]
    features: list[FeatureSource]
    spine_ids: tuple[PartId, ...] = ()
    """What each spine chunk holds (its range and digest), for an incremental merge; the
    features' are in `FeatureSource.ids`."""

    def merge(
        self,
        out: Path | StagedUpload,
        *,
        previous: Input | VouchedFile | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> MergeReport:
        """The pair's training file merged from these inputs into `out`, copying the row
        groups whose inputs did not change from `previous` (`merge_checkpoints`)."""
        return merge_checkpoints(
            self.spine,
            self.spine_columns,
            self.features,
            out,
            progress=progress,
            spine_ids=self.spine_ids,
            previous=previous,
        )


def part_id(manifest: ChunkManifest) -> PartId:
    """A chunk as the merge tells changed inputs apart: its key range and its bytes' digest."""
    r = manifest.range
    return PartId(_micros(r.start), _micros(r.end), f"{manifest.crc32c}:{manifest.bytes}")


def pair_inputs(storage: Storage, catalog: Catalog, pair: str, window: Window) -> PairInputs:
    """The pair's verified chunks inside `window` as the merge's inputs (`chunk_inputs` of the
    pair's tables and targets, with their part ids); fails naming every table without verified
    chunks."""
    targets = catalog.targets[pair]
    sources = [*catalog.tables_for(pair), targets]
    chosen = require_chunks(storage, sources, window, f"pair {pair}")
    inputs = _opened(storage, chosen)
    ids = {name: tuple(part_id(m) for _, m in chunks) for name, chunks in chosen.items()}
    facts = {name: _facts(m for _, m in chunks) for name, chunks in chosen.items()}
    return PairInputs(
        inputs[targets.name],
        tuple(targets.targets),
        sources_for_pair(
            catalog,
            pair,
            lambda table: inputs[table.name],
            lambda table: ids[table.name],
            lambda table: facts[table.name],
        ),
        ids[targets.name],
    )


def _facts(manifests: Iterable[ChunkManifest]) -> tuple[PartFacts, ...]:
    """The chunks' recorded facts, or () when any chunk lacks readable ones (the merge then
    opens every chunk of the table)."""
    out = []
    for manifest in manifests:
        facts = PartFacts.from_json(manifest.facts) if manifest.facts is not None else None
        if facts is None or sum(facts.rows) != manifest.rows:
            return ()
        out.append(facts)
    return tuple(out)


def _local(storage: Storage, key: str) -> Path:
    path = storage.local_path(key)
    if path is None:  # pragma: no cover - a root is local or an object store
        raise ExtractionError(f"{storage.uri_of(key)} is neither local nor in an object store")
    return path


def stored_window(storage: Storage, spine: TargetsTable, window: TrainingWindow) -> ResolvedWindow:
    """The window of a pair's training file: a fixed one as it is; a rolling one from the days
    its stored spine chunks hold, i.e. the window its checkpoint step resolved and extracted
    (the warehouse may have moved on since; asking it again would pick days not extracted).

    Raises ExtractionError naming the targets table when its chunks do not hold every day of
    the window in day chunks of their own (a spine extracted for another window)."""
    if not window.rolling:
        return ResolvedWindow(DateRange(window.start, window.end))
    where = f"{spine.dataset}.{spine.name}"
    days: set[date] = set()
    alone: set[date] = set()  # held by a day chunk of their own from midnight (end may cut it)
    for manifest in _stored_manifests(storage, spine).manifests.values():
        r = manifest.range
        lo, hi = _utc(r.start), _utc(r.end)
        for text, state in manifest.partitions.items():
            day = date.fromisoformat(text)
            if int(state[0]) > 0 and _day_start(day) < hi and _day_start(day + _ONE_DAY) > lo:
                days.add(day)
        if r.first == r.last and lo == _day_start(r.first):
            alone.add(r.first)
    if not days:
        raise ExtractionError(
            f"{where}: no stored spine chunk to take {window.describe()} from; run the pair's "
            "targets checkpoint"
        )
    start = _newest_days_start(list(days), window, where)
    end = _utc(window.end) if window.end is not None else None
    missing = [
        d
        for d in sorted(days - alone)
        if _day_start(d) >= start and (end is None or _day_start(d) < end)
    ]
    if missing:
        raise ExtractionError(
            f"{where}: the stored spine chunks do not hold {', '.join(map(str, missing))} of "
            f"{window.describe()} on their own (made for another window); run the pair's "
            "targets checkpoint"
        )
    return ResolvedWindow(DateRange(start, window.end), rolling=True)


def partitions_version(
    states: dict[str, Sequence[PartitionState]],
    expected: int,
    window: DateRange | TableWindow = ALL_TIME,
) -> str:
    """A data version of a set of tables from their day partitions inside `window`: it changes
    when a day a checkpoint would be made from changes (rows or last-modified time), not when a
    day outside the window does; "missing-N-..." while N of the `expected` tables are absent.
    With a `TableWindow`, the days are those its chunks would hold (a rolling window's first
    month chunk holds days before the window, and its chunks that end before it none)."""

    def counted(days: Sequence[PartitionState]) -> Iterator[PartitionState]:
        if isinstance(window, DateRange):
            yield from (p for p in days if _in_window(p.day, window))
            return
        ranges = chunk_ranges([p.day for p in days], window.window, window.grain, window.after)
        yield from (p for p in days if any(r.holds(p.day) for r in ranges))

    text = "\n".join(
        sorted(
            f"{table}:{p.day.isoformat()}:{p.rows}:{p.last_modified}"
            for table, days in states.items()
            for p in counted(days)
        )
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return digest if len(states) == expected else f"missing-{expected - len(states)}-{digest}"
