"""The refresh: each table's chunks brought up to date with its day partitions, reading only the
chunks whose days changed or are new."""

from __future__ import annotations

import bisect
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from bqx_assets.core.catalog import TARGETS_FAMILY, TargetsTable
from bqx_assets.core.checkpoints.extract import (
    ChunkPlan,
    ChunkStatus,
    RefreshedChunk,
    clear_temporaries,
    compact,
    extract_run,
)
from bqx_assets.core.checkpoints.manifest import (
    CHUNK_FORMAT,
    ChunkManifest,
    StoredChunks,
    manifest_key,
    partition_text,
    stored_manifests,
    write_index,
)
from bqx_assets.core.checkpoints.schema import (
    EXTRACT_MODES,
    ExtractMode,
    Source,
    expected_schema,
    owner_of,
    rows_per_read,
    schema_fingerprint,
)
from bqx_assets.core.checkpoints.select import require_chunks
from bqx_assets.core.checkpoints.tables import for_each_table
from bqx_assets.core.checkpoints.window import (
    ALL_TIME,
    DEFAULT_GRAIN,
    ChunkGrain,
    ChunkRange,
    ResolvedWindow,
    TrainingWindow,
    Window,
    chunk_ranges,
    clip,
    resolve_window,
    table_window,
    window_list,
)
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.layout import CHECKPOINT_ROW_GROUP_ROWS, chunk_key
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage import Storage
from bqx_assets.core.warehouse import Cut, DateRange, PartitionState, PartitionStates, Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkedCheckpoint:
    """The outcome of refreshing one table: its chunks for the window, in key order."""

    source: Source
    chunks: tuple[RefreshedChunk, ...]
    seconds: float

    @property
    def family(self) -> str:
        return getattr(self.source, "family", TARGETS_FAMILY)

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
    cut: Cut | None = None,
) -> ChunkedCheckpoint:
    """Bring a table's chunks for `window` up to date with its `partitions` (the table's
    per-day states as of `cut`, where given: every read and export is then as of it too, so
    that an upstream write while the run reads changes neither): chunks made from the same
    states are reused after verification (size and CRC32C against their manifest), the others
    read again, the read restricted to their range.
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
        raise ExtractionError(f"{where} has no partitions in the window {window_list(window)}")
    found = stored_manifests(storage, source)
    days = sorted(by_day)
    plans = []
    for chunk in ranges:
        held = days[bisect.bisect_left(days, chunk.first) : bisect.bisect_right(days, chunk.last)]
        plan = ChunkPlan(chunk, partition_text([by_day[d] for d in held]))
        key = chunk_key(owner, source.name, chunk.first, chunk.last)
        manifest = found.manifests.get(key)
        if _current(manifest, chunk, plan.partitions, fingerprint) and found.verified(
            key, manifest
        ):
            plan.done = RefreshedChunk("reused", manifest)
        else:
            plan.parts = _parts_of(found, plan, window, fingerprint)
        plans.append(plan)

    for plan in plans:
        if plan.done is None and plan.parts:
            plan.done = compact(storage, source, plan, work, row_group_rows, cut)
    todo = [p for p in plans if p.done is None]
    exported = None
    if mode == "export" and staging_uri and todo:
        # An export is of the whole table: one for every chunk to redo, however far apart.
        names = expected_schema(source).names
        exported = warehouse.export_table(source.dataset, source.name, names, staging_uri, cut=cut)
    if exported is not None:
        extract_run(
            warehouse, source, storage, todo, fingerprint, work, row_group_rows, exported, cut
        )
    else:
        for run in _runs(plans, rows_per_read(source)):
            extract_run(warehouse, source, storage, run, fingerprint, work, row_group_rows, cut=cut)

    # Chunks of this table that the new layout replaced (days now in a month chunk, chunks of
    # another grain or window) go, once every planned chunk is in place.
    keep = {chunk_key(owner, source.name, p.chunk.first, p.chunk.last) for p in plans}
    known = dict(found.manifests)
    for key, manifest in found.manifests.items():
        if key in keep:
            continue
        old = manifest.range
        if any(old.first <= p.chunk.last and old.last >= p.chunk.first for p in plans):
            storage.delete(manifest_key(key))
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
                written[manifest_key(key)] = c.stored
        write_index(storage, source, known, found, written)
    if sum(c.manifest.rows for c in chunks) == 0:
        raise ExtractionError(f"{where} has no rows in the window {window_list(window)}")
    return ChunkedCheckpoint(source, chunks, clock.seconds)


def _parts_of(
    found: StoredChunks,
    plan: ChunkPlan,
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
        expect = clip(old.first, old.last, window)
        mine = {d: s for d, s in plan.partitions.items() if old.holds(date.fromisoformat(d))}
        if _current(manifest, expect, mine, fingerprint) and found.verified(key, manifest):
            parts.append((key, manifest))
    parts.sort(key=lambda p: p[1].first)
    covered = [d for _, m in parts for d in m.partitions]
    if sorted(covered) != sorted(plan.partitions):
        return []
    return parts


def _runs(plans: Sequence[ChunkPlan], max_rows: int | None) -> list[list[ChunkPlan]]:
    """The chunks to read, as runs of neighbouring chunks of at most `max_rows` rows by their
    partitions (a longer chunk is a run of its own): one read each, so that a read's memory is
    bounded by the larger of `max_rows` and a chunk, not by the table."""
    runs: list[list[ChunkPlan]] = []
    rows, joined = 0, False
    for plan in plans:
        if plan.done is not None:
            joined = False
            continue
        n = plan.rows
        if not joined or (max_rows is not None and rows + n > max_rows):
            runs.append([])
            rows = 0
        runs[-1].append(plan)
        rows, joined = rows + n, True
    return runs


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
    cut: Cut | None = None,
    known: Mapping[str, PartitionStates] | None = None,
) -> list[ChunkedCheckpoint]:
    """Refresh many tables' chunks on a bounded thread pool, with one partition look-up per
    dataset, every table's states and rows as of one `cut` (the warehouse's `cut()` now, where
    none is given). A table that fails does not stop the others; then one ExtractionError names
    every failed table and its reason. A `ResolvedWindow` gives each table its chunk window
    (`ResolvedWindow.for_table`); a date range cuts every table alike. `known`: the look-ups
    as of `cut` the caller made already, by dataset (`step_states`), used instead of asking
    again."""
    clock = Stopwatch()
    if cut is None:
        cut, known = warehouse.cut(), None
    states: dict[tuple[str, str], tuple[PartitionState, ...]] = {}
    undescribed: dict[tuple[str, str], str] = {}
    for dataset in sorted({s.dataset for s in sources}):
        names = [s.name for s in sources if s.dataset == dataset]
        found = (known or {}).get(dataset)
        if found is None:
            found = warehouse.partition_states(dataset, names, cut=cut)
        states.update({(dataset, n): st for n, st in found.items()})
        undescribed.update({(dataset, n): why for n, why in found.errors.items()})
    counts = {"extracted": 0, "reused": 0, "bytes": 0}

    def one(source: Source) -> ChunkedCheckpoint:
        why = undescribed.get((source.dataset, source.name))
        if why is not None:  # this table fails on its own; the others go on
            raise ExtractionError(f"{source.dataset}.{source.name}: {why}")
        found = states.get((source.dataset, source.name))
        if found is None:
            raise ExtractionError(
                f"{source.dataset}.{source.name}: not found in the warehouse (no partitions)"
            )
        mine = table_window(window, source, grain)
        return refresh_table(
            warehouse, source, storage, found, window=mine.window, grain=mine.grain,
            after=mine.after, workdir=workdir, row_group_rows=row_group_rows, mode=mode,
            staging_uri=staging_uri, cut=cut,
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


@dataclass(frozen=True)
class CheckpointStep:
    """One checkpoint step's outcome: the window it resolved and each table's chunks, every
    one as of `cut`."""

    window: ResolvedWindow
    checkpoints: list[ChunkedCheckpoint]
    cut: Cut

    @property
    def bytes_read(self) -> int:
        return sum(c.bytes_read for c in self.checkpoints)

    def by_family(self) -> dict[str, list[ChunkedCheckpoint]]:
        out: dict[str, list[ChunkedCheckpoint]] = {}
        for checkpoint in self.checkpoints:
            out.setdefault(checkpoint.family, []).append(checkpoint)
        return out


def refresh_checkpoints(
    warehouse: Warehouse,
    storage: Storage,
    sources: Sequence[Source],
    spines: Sequence[TargetsTable],
    window: TrainingWindow,
    what: str,
    *,
    cut: Cut | None = None,
    **options: Any,
) -> CheckpointStep:
    """A checkpoint step: the window resolved once for all of its tables (a rolling one counts
    the trading days of `spines`: the pair's targets table, or every pair's for the shared
    tables), every table refreshed (`refresh_tables`, with `options`), then success only with
    verified chunks for every table the catalog lists, never fewer.

    One cut for the step, taken first (the warehouse's `cut()`, or `cut` where given: a pair's
    step given the shared step's cut reads as of the same moment, so that its spine ends
    where the shared tables do): the window, every table's partition states and every read
    are as of it, whatever upstream jobs write while the step reads. A given cut that some of
    the step's tables did not exist at yet (created or replaced since: BigQuery cannot read a
    table as of a time before its creation) gives way to the step's own."""
    tables = [*sources, *spines]
    if cut is None:
        cut = warehouse.cut()
        known = step_states(warehouse, tables, cut)
    else:
        known = step_states(warehouse, tables, cut)
        if not _existed(warehouse, known, tables, cut):
            cut = warehouse.cut()
            known = step_states(warehouse, tables, cut)
    resolved = resolve_window(warehouse, spines, window, cut=cut, known=known)
    done = refresh_tables(
        warehouse, sources, storage, window=resolved, cut=cut, known=known, **options
    )
    require_chunks(storage, sources, resolved, what)
    return CheckpointStep(resolved, done, cut)


def step_states(
    warehouse: Warehouse, tables: Sequence[Source | TargetsTable], cut: Cut
) -> dict[str, PartitionStates]:
    """The tables' partition states as of `cut`: one look-up per dataset for the whole step
    (the window and the refresh both take them from here)."""
    by_dataset: dict[str, set[str]] = {}
    for table in tables:
        by_dataset.setdefault(table.dataset, set()).add(table.name)
    return {
        dataset: warehouse.partition_states(dataset, sorted(names), cut=cut)
        for dataset, names in sorted(by_dataset.items())
    }


def _existed(
    warehouse: Warehouse,
    then: Mapping[str, PartitionStates],
    tables: Sequence[Source | TargetsTable],
    cut: Cut,
) -> bool:
    """Whether every one of `tables` that exists now existed at `cut` (its states `then`)."""
    for dataset, states in then.items():
        names = {t.name for t in tables if t.dataset == dataset}
        absent = sorted(names - set(states) - set(states.errors))
        if absent and set(warehouse.partition_states(dataset, absent)) & set(absent):
            log.warning(
                "%d table(s) of %s did not exist at the given cut %s (created or replaced "
                "since, e.g. %s): reading as of this step's own cut",
                len(absent), dataset, cut.at.isoformat(), absent[0],
            )  # fmt: skip
            return False
    return True
