"""The training file written row group by row group: pieces built on threads, appended in order."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from bqx_assets.core.errors import MergeError
from bqx_assets.core.merge.coverage import COVERAGE_KEY, CountedRows, Coverage, SpineIndex
from bqx_assets.core.merge.files import Blocks, fetch
from bqx_assets.core.merge.footer import MAGIC, FooterAssembler, Piece
from bqx_assets.core.merge.pieces import aligned_columns, piece_slices, spine_piece, table_piece
from bqx_assets.core.merge.plan import (
    IO_THREADS,
    WORKERS,
    Reads,
    TablePlan,
    open_needed,
    piece_reads,
)
from bqx_assets.core.merge.reuse import Reuse, row_groups_record
from bqx_assets.core.merge.rowgroups import Layout
from bqx_assets.core.storage import CopyMismatch, Sink, StorageError

PREFETCH_BYTES = 128 * 1024 * 1024
"""Compressed bytes of remote chunks fetched ahead of the decoding workers: bounds memory,
hides the latency of one request (~30 ms on GCS) behind decoding."""
_IN_FLIGHT = 2 * WORKERS  # finished pieces waiting for the writer: bounds memory, keeps both busy


@dataclass(frozen=True)
class _Task:
    """One piece to write: its row group, how to make it, and the byte ranges of remote chunks
    to fetch first."""

    group: int
    make: Callable[[dict[int, Blocks] | None], pa.Buffer]
    reads: Reads = ()
    where: str = ""

    @property
    def nbytes(self) -> int:
        return sum(stop - start for _, _, ranges in self.reads for start, stop in ranges)


def write_file(
    sink: Sink,
    keys: np.ndarray,
    spine: pa.Table,
    plans: Sequence[TablePlan],
    groups: Sequence[tuple[int, int]],
    progress: Callable[[str], None],
    newest_from: int,
    layout: Layout,
    reuse: Reuse | None = None,
    ahead: int = 0,
) -> Coverage:
    """Write the row groups in order after the leading magic, each copied from `reuse` or built
    from pieces, then the footer with the coverage record and the row groups' record; returns
    the coverage record. The first `ahead` row groups were handed to `sink.copy_ahead` by the
    caller: they are only recorded here."""
    footer = FooterAssembler()
    written: list[dict[str, Any]] = []  # the row groups' record, without their footer spans
    copied = reuse.groups if reuse is not None else {}
    if reuse is not None:
        progress(
            f"copying {reuse.count} unchanged row groups ({reuse.bytes:,} B) from {reuse.source}"
        )

    def adopt(index: int, start: int) -> None:
        assert reuse is not None
        adopted = copied[index]
        g = adopted.record
        footer.adopt(adopted.raw, start - int(g["start"]), index, adopted.was)
        written.append(  # the same keys in the same order as a built row group's
            {
                "rows": g["rows"],
                "start": start,
                "end": start + int(g["end"]) - int(g["start"]),
                "crc32c": g["crc32c"],
                "signature": g["signature"],
            }
        )

    at = len(MAGIC)
    for index in range(ahead):
        start, stop, _ = copied[index].span
        adopt(index, at)
        at += stop - start

    def copy_until(r: int) -> None:
        """Copy the reused row groups before row group `r` that are not written yet."""
        while len(written) < r:
            index = len(written)
            assert reuse is not None and index in copied  # the others are built, in order
            begin = sink.tell()
            try:
                sink.copy_segment(reuse.source, *copied[index].span)
            except CopyMismatch:
                raise reuse.damaged(index) from None
            except StorageError as exc:
                raise MergeError(f"previous training file {reuse.source}: {exc}") from exc
            adopt(index, begin)

    # The nulls of the newest day and of its reference minutes are counted in the pieces that
    # hold them; reference minutes in a copied row group are read from the chunks to be counted.
    counted = CountedRows.of(SpineIndex.of(keys), newest_from)
    copied_references = counted.spans([groups[r] for r in copied])
    if copied_references:
        progress(f"counting the nulls of {len(copied_references)} copied span(s) of reference rows")
        _count_from_chunks(plans, keys, copied_references)
    tasks: list[_Task] = []
    for r, (a, b) in enumerate(groups):
        if r in copied:
            continue
        for s in piece_slices(1 + spine.num_columns, b - a):
            tasks.append(_Task(r, lambda _, a=a, b=b, s=s: spine_piece(keys, spine, a, b, s)))
        within = counted.within(a, b)
        for plan in plans:
            for s in piece_slices(len(plan.columns), b - a):
                tasks.append(
                    _Task(
                        r,
                        lambda blocks, p=plan, a=a, b=b, s=s, w=within: table_piece(
                            p, keys[a:b], s, w, blocks
                        ),
                        piece_reads(plan, keys[a:b], s),
                        plan.where,
                    )
                )
    every = max(1, len(tasks) // 10)
    stop = threading.Event()
    remote = any(t.reads for t in tasks)

    def fetch_reads(task: _Task) -> dict[int, Blocks] | None:
        if stop.is_set() or not task.reads:
            return None
        return {index: fetch(file, ranges, task.where) for index, file, ranges in task.reads}

    def run(task: _Task, fetched: Future[dict[int, Blocks] | None] | None) -> Piece | None:
        if stop.is_set():  # an earlier piece failed: don't start more
            return None
        blocks = fetched.result() if fetched is not None else None
        return Piece.parse(task.make(blocks))  # parsed here, off the writing thread

    def close_group(r: int, start: int) -> None:
        end = sink.tell()
        written.append(
            {
                "rows": groups[r][1] - groups[r][0],
                "start": start,
                "end": end,
                "crc32c": sink.end_segment(),
                "signature": layout.signatures[r],
            }
        )

    io_pool = ThreadPoolExecutor(IO_THREADS) if remote else nullcontext()
    with ThreadPoolExecutor(WORKERS) as pool, io_pool as io:
        building, start = -1, sink.tell()
        pending: deque[tuple[_Task, Future[Piece | None]]] = deque()
        fetches: dict[int, Future[dict[int, Blocks] | None]] = {}
        following = 0  # next task to prefetch
        fetching = 0  # compressed bytes fetched or being fetched for tasks not yet written
        submitted = 0
        try:
            for done in range(len(tasks)):
                while len(pending) < _IN_FLIGHT and submitted < len(tasks):
                    # Prefetch ranges ahead of the workers within the byte budget (always at
                    # least the next task's own).
                    while (
                        following < len(tasks)
                        and io is not None
                        and (
                            following <= submitted
                            or fetching + tasks[following].nbytes <= PREFETCH_BYTES
                        )
                    ):
                        if tasks[following].reads:
                            fetches[following] = io.submit(fetch_reads, tasks[following])
                            fetching += tasks[following].nbytes
                        following += 1
                    task = tasks[submitted]
                    pending.append((task, pool.submit(run, task, fetches.pop(submitted, None))))
                    submitted += 1
                task, future = pending.popleft()
                piece = future.result()
                fetching -= task.nbytes
                if piece is not None:
                    if task.group != building:  # tasks come in row-group order
                        if building >= 0:
                            close_group(building, start)
                        copy_until(task.group)
                        building, start = task.group, sink.tell()
                    footer.add(
                        sink, piece, task.group, groups[task.group][1] - groups[task.group][0]
                    )
                if (done + 1) % every == 0:
                    line = f"{done + 1}/{len(tasks)} pieces; {sink.tell():,} bytes written"
                    progress(f"merged {line}")
        except BaseException:
            stop.set()
            for _, future in pending:
                future.cancel()
            for waiting in fetches.values():
                waiting.cancel()
            raise
    coverage = Coverage(
        spine_rows=len(keys),
        first_key=int(keys[0]),
        last_key=int(keys[-1]),
        newest_from=newest_from,
        newest_rows=len(keys) - counted.newest_start,
        tables=tuple(
            replace(
                p.coverage,
                newest_nulls=tuple(int(v) for v in p.newest_nulls),
                reference_nulls=tuple(int(v) for v in p.reference_nulls),
            )
            for p in plans
            if p.coverage is not None
            and p.newest_nulls is not None
            and p.reference_nulls is not None
        ),
        reference_rows=len(counted.reference),
    )
    if building >= 0:
        close_group(building, start)
    copy_until(len(groups))
    sink.write(
        footer.encode(
            sum(b - a for a, b in groups),
            {COVERAGE_KEY: coverage.encode()},
            lambda spans, encoded: row_groups_record(layout, written, spans, encoded),
        )
    )
    return coverage


def _count_from_chunks(
    plans: Sequence[TablePlan], keys: np.ndarray, spans: Sequence[tuple[int, int]]
) -> None:
    """Count each table's nulls in the spine rows `spans` (reference minutes inside copied row
    groups, which are not encoded) from its chunks, a piece of columns at a time, WORKERS at
    once; the chunks read are checked first as an encoded row group's are."""
    open_needed(plans, keys, spans)
    wanted = keys[np.concatenate([np.arange(a, b) for a, b in spans])]

    def count(job: tuple[TablePlan, slice]) -> None:
        plan, s = job
        plan.count_nulls(s, None, [c.null_count for c in aligned_columns(plan, wanted, s)])

    jobs = [(p, s) for p in plans for s in piece_slices(len(p.columns), len(wanted))]
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(count, jobs))
