"""The stored chunks a merge reads: each table's current, verified chunks inside the window."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime

from bqx_assets.core.catalog import TargetsTable
from bqx_assets.core.checkpoints.manifest import ChunkManifest, StoredChunks, stored_manifests
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.window import (
    DEFAULT_GRAIN,
    ONE_DAY,
    ChunkGrain,
    ResolvedWindow,
    TrainingWindow,
    Window,
    day_start,
    newest_days_start,
    table_window,
    utc,
    window_list,
)
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.storage import Storage
from bqx_assets.core.warehouse import DateRange


def current_chunks(
    storage: Storage,
    source: Source,
    window: DateRange,
    after: datetime | None = None,
    found: StoredChunks | None = None,
) -> list[tuple[str, ChunkManifest]]:
    """The table's stored chunks inside `window` whose files match their manifests, in key
    order: what the merge reads for it. Chunks outside the window, or ending at or before
    `after` (a rolling window's first day), are not listed (not read). `found`: the table's
    stored manifests where the caller listed them already.

    Raises ExtractionError naming the table when there are none, or when two overlap."""
    where = f"{source.dataset}.{source.name}"
    lo = utc(window.start) if window.start else None
    hi = utc(window.end) if window.end else None
    chosen = []
    found = found or stored_manifests(storage, source)
    for key, manifest in found.manifests.items():
        r = manifest.range
        if (lo is not None and utc(r.start) < lo) or (hi is not None and utc(r.end) > hi):
            continue
        if after is not None and utc(r.end) <= utc(after):
            continue
        if not found.verified(key, manifest):
            raise ExtractionError(
                f"{where}: chunk {storage.uri_of(key)} does not match its manifest (changed or "
                "missing since extraction); re-run its checkpoint"
            )
        chosen.append((key, manifest))
    chosen.sort(key=lambda c: c[1].range.start)
    if not chosen:
        raise ExtractionError(f"{where}: no verified chunk in the window {window_list(window)}")
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
    with ThreadPoolExecutor(storage.concurrency) as pool:
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
    for manifest in stored_manifests(storage, spine).manifests.values():
        r = manifest.range
        lo, hi = utc(r.start), utc(r.end)
        for text, state in manifest.partitions.items():
            day = date.fromisoformat(text)
            if int(state[0]) > 0 and day_start(day) < hi and day_start(day + ONE_DAY) > lo:
                days.add(day)
        if r.first == r.last and lo == day_start(r.first):
            alone.add(r.first)
    if not days:
        raise ExtractionError(
            f"{where}: no stored spine chunk to take {window.describe()} from; run the pair's "
            "targets checkpoint"
        )
    start = newest_days_start(list(days), window, where)
    end = utc(window.end) if window.end is not None else None
    missing = [
        d
        for d in sorted(days - alone)
        if day_start(d) >= start and (end is None or day_start(d) < end)
    ]
    if missing:
        raise ExtractionError(
            f"{where}: the stored spine chunks do not hold {', '.join(map(str, missing))} of "
            f"{window.describe()} on their own (made for another window); run the pair's "
            "targets checkpoint"
        )
    return ResolvedWindow(DateRange(start, window.end), rolling=True)
