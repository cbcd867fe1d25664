"""Before a merge: a pair's chunks that are missing or unverifiable since its checkpoint steps
(deleted by a lifecycle rule or by hand, changed, never finished) re-extracted through the
refresh, so that the merge reads what a run where nothing was deleted would have read."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.manifest import (
    MANIFEST_SUFFIX,
    ChunkManifest,
    StoredChunks,
    stored_manifests,
)
from bqx_assets.core.checkpoints.refresh import ChunkedCheckpoint, refresh_tables
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.select import current_chunks, require_chunks, stored_window
from bqx_assets.core.checkpoints.window import (
    DEFAULT_GRAIN,
    ChunkGrain,
    ResolvedWindow,
    TrainingWindow,
    Window,
    resolve_window,
    table_window,
)
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.storage import Storage
from bqx_assets.core.warehouse import Warehouse

_DAYS = re.compile(r"(\d{4}-\d{2}-\d{2})_(\d{4}-\d{2}-\d{2})$")


Chosen = dict[str, list[tuple[str, ChunkManifest]]]
"""Each table's verified chunks for a window, in key order, by table name: what the merge reads
(`select.require_chunks`)."""


@dataclass(frozen=True)
class Checked:
    """The tables' chunks as found before a merge: the whole tables' and why the others fail."""

    chunks: Chosen
    missing: dict[str, str]
    """Why each other table cannot be merged as extracted, by table name."""


@dataclass(frozen=True)
class Recovery:
    """What the step before a merge found missing, the refresh that re-made it, and every
    table's verified chunks after it, which the merge reads without listing them again."""

    window: ResolvedWindow
    """The window the pair's checkpoints were made for, which the merge reads."""
    missing: dict[str, str]
    """Why each table was refreshed again, by table name (none: nothing was missing)."""
    chunks: Chosen
    checkpoints: tuple[ChunkedCheckpoint, ...] = ()
    query_bytes_billed: int = 0
    """What the warehouse billed the refresh's queries (its partition look-ups)."""

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.missing)

    @property
    def chunks_extracted(self) -> int:
        return sum(c.count("extracted") for c in self.checkpoints)

    @property
    def bytes_read(self) -> int:
        return sum(c.bytes_read for c in self.checkpoints)


def gone_chunks(storage: Storage, source: Source, found: StoredChunks | None = None) -> list[str]:
    """The day ranges (`first_last`) of chunks whose manifest the table's chunk index lists but
    its folder no longer holds: deleted with their manifest since the refresh that wrote the
    index (which lists only the manifests present then). A merge cannot tell such a chunk from
    one never made, so it is looked for here, whatever the window. `found`: the table's stored
    manifests where the caller listed them already."""
    found = found or stored_manifests(storage, source)
    out = []
    for key in sorted(k for k in found.index if k not in found.infos):
        days = _DAYS.search(key.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX))
        out.append(f"{days[1]}_{days[2]}" if days else key)
    return out


def check_chunks(
    storage: Storage, sources: Sequence[Source], window: Window, grain: ChunkGrain = DEFAULT_GRAIN
) -> Checked:
    """Each of `sources` checked as the merge will read it for `window`, with one listing of
    its folder: its verified chunks (`select.current_chunks`), or why it cannot be merged as
    extracted: a chunk that does not match its manifest, no chunk, overlapping chunks, or
    chunks gone with their manifests (`gone_chunks`)."""

    def check(source: Source) -> list[tuple[str, ChunkManifest]] | str:
        found = stored_manifests(storage, source)  # one listing for both checks
        gone = gone_chunks(storage, source, found)
        if gone:
            return (
                f"{source.dataset}.{source.name}: chunk(s) {', '.join(gone[:5])}"
                f"{' ...' if len(gone) > 5 else ''} listed in its chunk index are gone"
            )
        try:
            mine = table_window(window, source, grain)
            return current_chunks(storage, source, mine.window, mine.after, found)
        except ExtractionError as exc:
            return str(exc)

    # As `require_chunks`: a few tables at a time, each two or three requests.
    with ThreadPoolExecutor(storage.concurrency) as pool:
        results = zip(sources, pool.map(check, sources), strict=True)
    checked = Checked({}, {})
    for source, result in results:
        if isinstance(result, str):
            checked.missing[source.name] = result
        else:
            checked.chunks[source.name] = result
    return checked


def recover_chunks(
    open_warehouse: Callable[[], Warehouse],
    storage: Storage,
    sources: Sequence[Source],
    window: ResolvedWindow,
    what: str,
    **options: Any,
) -> Recovery:
    """Every table of `sources` whose chunks for `window` are missing or unverifiable refreshed
    again (`refresh.refresh_tables` with `options`: its verified chunks reused, the others read
    again), then checked as the merge will check them; every table's chunks returned. The
    warehouse is opened (and closed) only when something is missing. Raises ExtractionError
    naming each table that the refresh could not make whole."""
    grain = options.get("grain", DEFAULT_GRAIN)
    checked = check_chunks(storage, sources, window, grain)
    if not checked.missing:
        return Recovery(window, {}, checked.chunks)
    redo = [s for s in sources if s.name in checked.missing]
    warehouse = open_warehouse()
    try:
        done = refresh_tables(warehouse, redo, storage, window=window, **options)
        billed = warehouse.bytes_billed
    finally:
        warehouse.close()
    chunks = {**checked.chunks, **require_chunks(storage, redo, window, what, grain)}
    return Recovery(window, checked.missing, chunks, tuple(done), billed)


def recover_pair_chunks(
    open_warehouse: Callable[[], Warehouse],
    storage: Storage,
    catalog: Catalog,
    pair: str,
    window: TrainingWindow,
    **options: Any,
) -> Recovery | None:
    """`recover_chunks` for the tables a pair's merge reads (its targets table, its feature
    tables and the shared ones it uses), in the window its checkpoints were made for: the one
    its stored spine holds (`select.stored_window`, as the merge takes it), or, for a rolling
    window whose stored spine is itself damaged, the one resolved from the warehouse as its
    checkpoint step did (`window.resolve_window`). None when the pair's spine was never
    extracted (no chunk, no manifest, no index): that is no loss to recover, and the merge
    fails naming the tables, as a training file built before its checkpoints should."""
    spine = catalog.targets[pair]
    stored = stored_manifests(storage, spine)
    if not stored.infos and not stored.index:
        return None
    sources: list[Source] = [spine, *catalog.tables_for(pair)]
    what = f"pair {pair}"
    resolved: ResolvedWindow | None = None
    if not window.rolling or not gone_chunks(storage, spine):
        try:
            resolved = stored_window(storage, spine, window)
        except ExtractionError:
            resolved = None
    if resolved is None:
        warehouse = open_warehouse()
        try:
            resolved = resolve_window(warehouse, [spine], window)
        finally:
            warehouse.close()
    return recover_chunks(open_warehouse, storage, sources, resolved, what, **options)
