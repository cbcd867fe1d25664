"""The footer walk: per column null counts and ranges over every row group, in bounded memory."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.errors import ValidationError


@dataclass
class ColumnStats:
    """Per top-level column: null count over the file and min/max of float columns."""

    names: list[str]
    types: list[pa.DataType]
    nulls: np.ndarray  # int64; -1 where a chunk has no null count statistics
    last_group_nulls: np.ndarray  # int64 nulls in the last row group (tail completeness)
    last_group_rows: int
    minmax: dict[int, tuple[float, float]]  # float columns: min/max in the sample row group
    sample_group: int
    mins: np.ndarray  # float64 min over all row groups of numeric columns, NaN where unknown
    maxs: np.ndarray


def check_footer_size(
    path: Path | str, pair: str, limit: int, source: BinaryIO | None = None
) -> None:
    """Refuse a footer too large to parse in bounded memory, from its length in the last 8 bytes
    (a file that is not parquet is left to pyarrow's error)."""
    try:
        with nullcontext(source) if source is not None else open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < 12:
                return
            f.seek(-8, 2)
            tail = f.read(8)
    except OSError as exc:
        raise ValidationError(f"pair {pair}: cannot read {path}: {exc}") from exc
    if tail[4:] != b"PAR1":
        return
    footer = int.from_bytes(tail[:4], "little")
    if footer > limit:
        raise ValidationError(
            f"pair {pair}: {path} has a {footer / 2**20:.0f} MiB parquet footer (too many row "
            f"groups x columns); parsing it needs ~{footer * 7.5 / 2**30:.1f} GiB, over the "
            f"{limit / 2**20:.0f} MiB footer limit. Write the file with fewer row groups (the "
            "merge writes one per 262,144 rows) or raise max_footer_bytes."
        )


def footer_stats(pf: pq.ParquetFile, path: Path | str, want_minmax: set[int]) -> ColumnStats:
    """Aggregate column chunk null counts and min/max over all row groups.

    This walk is the whole cost of validating a 17,000-column file (about 1.5 us per column
    chunk per statistic). The merge writes a row group per month and per week of the newest
    month (~11 at production length), each a different stretch of the series, so the profile's
    ranges come from every one of them (a sample would miss months). The leak check's min/max
    come from the middle row group, where a copied target has the same min/max as its source.
    """
    meta = pf.metadata
    schema = pf.schema_arrow
    names = schema.names
    n = len(names)
    if meta.num_columns != n:
        # Nested columns would map several leaves to one field; the training file is flat.
        raise ValidationError(
            f"{path}: {meta.num_columns} parquet leaf columns for {n} fields; "
            "a training file has flat columns only"
        )
    # One list comprehension per row group, None where a chunk has no null count: half the
    # time of a loop with per-chunk branches and numpy item assignments.
    total = np.zeros(n, dtype=np.float64)  # exact: null counts stay far below 2**53
    last = np.zeros(n, dtype=np.float64)
    groups = meta.num_row_groups
    for g in range(groups):
        column = meta.row_group(g).column
        counts = np.array(
            [s.null_count if (s := column(j).statistics) is not None else None for j in range(n)],
            dtype=np.float64,
        )
        total += counts
        if g == groups - 1:
            last = counts
    missing = np.isnan(total)
    nulls = np.where(missing, -1, total).astype(np.int64)
    last_nulls = np.nan_to_num(last).astype(np.int64)
    last_rows = meta.row_group(groups - 1).num_rows if groups else 0
    numeric = np.asarray(
        [
            j
            for j, t in enumerate(schema.types)
            if pa.types.is_floating(t) or pa.types.is_integer(t)
        ],
        dtype=np.int64,
    )
    mins = np.full(n, np.nan)
    maxs = np.full(n, np.nan)
    minmax: dict[int, tuple[float, float]] = {}
    # Every row group: a row group is a month or a day (merge/rowgroups.py), so a sample of
    # them would miss the ranges of the others.
    for g in range(groups):
        column = meta.row_group(g).column
        # One (min, max) per chunk, NaN where a chunk has none (all null). Holding the chunks'
        # statistics objects instead would hold their metadata: ~100 MB at 17K columns.
        nan = (np.nan, np.nan)
        ranges = np.array(
            [
                (s.min, s.max)
                if (s := column(int(j)).statistics) is not None and s.has_min_max
                else nan
                for j in numeric
            ],
            dtype=np.float64,
        ).reshape(-1, 2)
        lo, hi = ranges[:, 0], ranges[:, 1]
        mins[numeric] = np.fmin(mins[numeric], lo)
        maxs[numeric] = np.fmax(maxs[numeric], hi)
        if g == groups // 2 and want_minmax:
            for k, j in enumerate(numeric):
                if int(j) in want_minmax and not np.isnan(lo[k]):
                    minmax[int(j)] = (float(lo[k]), float(hi[k]))
    return ColumnStats(
        names, list(schema.types), nulls, last_nulls, last_rows, minmax, groups // 2, mins, maxs
    )


def fill_missing_nulls(pf: pq.ParquetFile, stats: ColumnStats) -> int:
    """Count nulls by reading the data of columns whose footer lacks null counts, one column at a
    time (bounded memory); returns how many columns had to be read."""
    todo = np.flatnonzero(stats.nulls < 0)
    for j in todo:
        column = pf.read(columns=[stats.names[j]]).column(0)
        stats.nulls[j] = column.null_count
    return len(todo)
