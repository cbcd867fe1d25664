"""`merge_checkpoints`: the spine left-joined with every table into one file, in bounded memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.keys import check_unique, keys_us
from bqx_assets.core.layout import KEY, canonical_type
from bqx_assets.core.merge.coverage import Coverage, SpineIndex, newest_day_start
from bqx_assets.core.merge.files import open_parquet
from bqx_assets.core.merge.footer import MAGIC
from bqx_assets.core.merge.inputs import InputTable
from bqx_assets.core.merge.plan import check_names, open_needed, plan_tables
from bqx_assets.core.merge.reuse import Reuse, find_reuse
from bqx_assets.core.merge.rowgroups import (
    DEFAULT_ROW_GROUP_ROWS,
    Layout,
    declared,
    plan_digest,
    row_groups,
    signatures,
)
from bqx_assets.core.merge.write import write_file
from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
from bqx_assets.core.storage import CopyMismatch, Sink, StagedFile, StoredFile


@dataclass(frozen=True)
class MergeReport:
    rows: int
    columns: int
    seconds: float
    peak_rss_bytes: int
    bytes_written: int
    row_groups: int
    staged: StagedFile
    """The merged file, committed by its sink: verified, not yet published."""
    coverage: Coverage | None = None
    """Which spine rows each feature table covered (also in the file's footer metadata)."""
    row_groups_reused: int = 0
    """Row groups copied from the previous file (unchanged inputs)."""
    bytes_reused: int = 0
    chunks: int = 0
    """Chunks of the feature tables."""
    chunks_opened: int = 0
    """Of those, the chunks whose files were opened: all of them but where a refresh copies the
    row groups they feed and their facts were recorded."""


def merge_checkpoints(
    spine: InputTable,
    tables: Sequence[InputTable],
    sink: Sink,
    *,
    previous: StoredFile | None = None,
    row_group_rows: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> MergeReport:
    """Write into `sink` the spine's rows in spine order, columns `interval_time`, the spine's
    columns, then each table's columns, left-joined on `interval_time`; commit it and read its
    footer and key column back.

    Every input is checked before anything heavy is done (types, keys, duplicate keys, name
    collisions), but for the copy of a refresh's leading unchanged row groups, which the sink
    may start first and which stops on an error. On any error the sink is aborted: nothing is
    left, and nothing published is touched.

    `previous` (an earlier training file of the pair, e.g. the published one) and the chunks'
    ids make the merge incremental: its row groups whose inputs are unchanged are copied,
    checked against the CRC32C they were written with (unread where the previous file's root
    vouches for it), instead of encoded; the result is the file a from-scratch merge writes,
    byte for byte."""
    try:
        return _merge(spine, tables, sink, previous, row_group_rows, progress or _quiet)
    except BaseException:
        sink.abort()
        raise


def _merge(
    spine: InputTable,
    tables: Sequence[InputTable],
    sink: Sink,
    previous: StoredFile | None,
    row_group_rows: int | None,
    progress: Callable[[str], None],
) -> MergeReport:
    watch = Stopwatch()
    rows_per_group = row_group_rows or DEFAULT_ROW_GROUP_ROWS
    if rows_per_group < 1:
        raise MergeError(f"row_group_rows must be positive, got {rows_per_group}")
    spine_columns = [c for c, _ in spine.columns or ()]
    keys, spine_data = _read_spine(spine, spine_columns)
    newest_from = newest_day_start(keys)
    groups = row_groups(keys, rows_per_group)
    signed = signatures(keys, groups, spine, tables)

    def layout_of(names: Sequence[str], types: Sequence[pa.DataType]) -> Layout:
        types = [*spine_data.schema.types, *types]
        return Layout(plan_digest(names, types, rows_per_group), signed)

    def reuse_of(layout: Layout, names: Sequence[str]) -> Reuse | None:
        if previous is None:
            return None
        return find_reuse(previous, layout, names, groups, keys, newest_from, progress)

    sink.write_segment(MAGIC)
    # What to copy from the previous file is known before the inputs are checked when the
    # catalog declares every column and type: the sink may start copying the leading row
    # groups while they are (a local file's copy waits on the disk, the checks on the CPU).
    early: tuple[Layout, Reuse | None] | None = None
    ahead = 0
    if (found := declared(tables)) is not None:
        names = [KEY, *spine_columns, *found[0]]
        layout = layout_of(names, found[1])
        early = (layout, reuse_of(layout, names))
        if early[1] is not None:
            leading = early[1].leading()
            ahead = sink.copy_ahead(early[1].source, [early[1].groups[r].span for r in leading])

    progress(f"spine {spine.where()}: {len(keys):,} rows; checking {len(tables)} tables")
    plans = plan_tables(tables, SpineIndex.of(keys), newest_from)
    names = [KEY, *spine_columns] + [n for p in plans for n in p.names]
    check_names(spine, plans)
    first_column = 1 + len(spine_columns)
    for plan in plans:
        plan.first_column, first_column = first_column, first_column + len(plan.columns)
        if plan.coverage is not None:
            plan.coverage = replace(plan.coverage, first_column=plan.first_column)
    progress(f"inputs checked: {len(names):,} output columns")
    layout = layout_of(names, [t for p in plans for t in p.types])
    if early is None:
        reuse = reuse_of(layout, names)
    elif layout != early[0]:  # the checks hold the chunks to the declared columns and types
        raise MergeError("the checked inputs' columns differ from the catalog's declaration")
    else:
        reuse = early[1]
    copied = reuse.groups if reuse is not None else {}
    open_needed(plans, keys, [g for r, g in enumerate(groups) if r not in copied])

    coverage = write_file(
        sink, keys, spine_data, plans, groups, progress, newest_from, layout, reuse, ahead
    )
    try:
        staged = sink.commit()
    except CopyMismatch as exc:
        assert reuse is not None
        r = next((r for r, g in reuse.groups.items() if g.span[0] == exc.start), 0)
        raise reuse.damaged(r) from None
    _verify(staged.file, keys, names, len(groups))
    report = MergeReport(
        rows=len(keys),
        columns=len(names),
        seconds=round(watch.seconds, 3),
        peak_rss_bytes=peak_rss_bytes(),
        bytes_written=staged.info.size,
        row_groups=len(groups),
        staged=staged,
        coverage=coverage,
        row_groups_reused=reuse.count if reuse else 0,
        bytes_reused=reuse.bytes if reuse else 0,
        chunks=sum(len(p.files) for p in plans),
        chunks_opened=sum(len(p.files) - len(p.unopened) for p in plans),
    )
    progress(
        f"wrote {staged.info.uri}: {report.rows:,} rows x {report.columns:,} columns in "
        f"{report.seconds:.1f}s"
    )
    return report


def _read_spine(spine: InputTable, columns: Sequence[str]) -> tuple[np.ndarray, pa.Table]:
    """The spine's keys (unique, int64 microseconds) and its columns, from all of its chunks."""
    where = f"spine {spine.where()}"
    if not spine.chunks:
        raise MergeError(f"{where}: has no chunks")
    parts = []
    for chunk in spine.chunks:
        here = f"spine {chunk.file}" if len(spine.chunks) > 1 else where
        pf = open_parquet(chunk.file, here)
        missing = [c for c in [KEY, *columns] if c not in pf.schema_arrow.names]
        if missing:
            raise MergeError(f"{here}: missing columns {missing}")
        try:
            # One file: ParquetFile.read (pq.read_table would load pyarrow.dataset, and pandas).
            parts.append(pf.read(columns=[KEY, *columns]))
        except StorageError as exc:
            raise MergeError(f"{here}: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise MergeError(f"{here}: not a readable parquet file: {exc}") from exc
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    if table.num_rows == 0:
        raise MergeError(f"{where}: has no rows")
    keys = keys_us(table.column(KEY), where, MergeError)
    check_unique(keys, where, MergeError)
    fields = [pa.field(c, canonical_type(table.schema.field(c).type)) for c in columns]
    return keys, table.drop_columns([KEY]).cast(pa.schema(fields)).combine_chunks()


def _verify(file: StoredFile, keys: np.ndarray, names: Sequence[str], groups: int) -> None:
    """Read the written file's footer and key column back before it is published."""
    where = f"merged file {file}"
    try:
        pf = open_parquet(file, where)
        meta = pf.metadata
        if meta.num_rows != len(keys) or meta.num_row_groups != groups:
            raise MergeError(
                f"{where}: footer says {meta.num_rows} rows in {meta.num_row_groups} row groups, "
                f"expected {len(keys)} in {groups}"
            )
        written = pf.schema_arrow.names
        if written != list(names):
            raise MergeError(f"{where}: columns differ from the plan ({len(written)} written)")
        back = keys_us(pf.read(columns=[KEY]).column(0), where, MergeError)
    except StorageError as exc:
        raise MergeError(f"{where}: cannot be read back: {exc}") from exc
    except (OSError, pa.ArrowException) as exc:
        raise MergeError(f"{where}: cannot be read back: {exc}") from exc
    if not np.array_equal(back, keys):
        raise MergeError(f"{where}: key column read back differs from the spine")


def _quiet(_line: str) -> None:
    """Progress lines nobody asked for."""
