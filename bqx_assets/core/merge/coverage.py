"""Which spine rows each feature table covered, recorded by the merge in the file's footer."""

# Why: docs/design/gate.md.

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

COVERAGE_KEY = "bqx:coverage"
"""Key of the coverage record in the training file's key-value metadata."""

_VERSION = 4
"""4: each table's reference minutes (rows and nulls) beside its newest day's; a tail minute is
due by its reference minute."""
_ZSTD = "zstd+base64:"
_COMPRESS_ABOVE = 16 * 1024
"""JSON records larger than this are stored zstd-compressed and base64-encoded (a full pair's
record, 667 tables with a count per column, is ~250 KB of JSON, ~40 KB stored)."""

_DAY_US = 86_400 * 1_000_000
REFERENCE_DAYS = 7
"""How many days back a minute's reference is looked for: a week reaches across any weekend and
a few holidays."""


def newest_day_start(keys: np.ndarray) -> int:
    """First key (microseconds) of the spine's last trading day: the UTC day of its last key."""
    last = int(keys[-1])
    return last - last % _DAY_US


class CoverageVersionError(ValueError):
    """A coverage record written by another version of the merge."""


@dataclass(frozen=True)
class TableCoverage:
    """What one feature table contributed to the training file."""

    table: str
    first_column: int
    """Index of the table's first column in the training file; its columns are contiguous."""
    columns: int
    source_rows: int
    """Rows of the table's checkpoint."""
    matched: int
    """Spine keys that the table has a row for."""
    first_key: int | None
    last_key: int | None
    """First and last spine key covered (microseconds), None when none is."""
    newest_matched: int
    """Spine keys of the newest day that the table has a row for."""
    tail_missing: int
    """Spine keys after the last one covered: how early the table stops."""
    tail_expected: int
    """Of those, the keys whose reference minute (`SpineIndex.reference`: the same minute of the
    latest earlier day of the spine that has it) the table covered: the rows a table with a
    daily pattern (an ETF's trading hours) should have had, so a stop outside its hours is not
    counted, nor a minute no earlier day of the spine has."""
    longest_gap: int
    """Longest run of spine keys not covered between the first and the last covered: the gaps
    the table has by nature (an ETF closed overnight, a feed outage)."""
    source_nulls: tuple[int, ...]
    """Null cells per column in the whole checkpoint (its footer statistics; -1 when absent)."""
    newest_nulls: tuple[int, ...]
    """Null cells per column in the newest day's rows of the training file, whatever made them."""
    reference_matched: int = 0
    """Reference minutes of the newest day's keys (`Coverage.reference_rows`) the table has a row
    for."""
    reference_nulls: tuple[int, ...] = ()
    """Null cells per column in those reference minutes' rows of the training file."""

    def to_json(self) -> list[Any]:
        return [
            self.table,
            self.first_column,
            self.columns,
            self.source_rows,
            self.matched,
            self.first_key,
            self.last_key,
            self.newest_matched,
            self.tail_missing,
            self.tail_expected,
            self.longest_gap,
            list(self.source_nulls),
            list(self.newest_nulls),
            self.reference_matched,
            list(self.reference_nulls),
        ]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> TableCoverage:
        (table, first, columns, rows, matched, lo, hi, newest, short, due, gap, source, tail,
         reference, reference_nulls) = row  # fmt: skip
        return cls(
            str(table),
            int(first),
            int(columns),
            int(rows),
            int(matched),
            None if lo is None else int(lo),
            None if hi is None else int(hi),
            int(newest),
            int(short),
            int(due),
            int(gap),
            tuple(int(v) for v in source),
            tuple(int(v) for v in tail),
            int(reference),
            tuple(int(v) for v in reference_nulls),
        )


@dataclass(frozen=True)
class Coverage:
    """Coverage of every feature table of one training file, against its spine."""

    spine_rows: int
    first_key: int
    last_key: int
    newest_from: int
    """First key of the newest day (the last UTC day of the spine)."""
    newest_rows: int
    tables: tuple[TableCoverage, ...]
    reference_rows: int = 0
    """Spine keys that are the reference minute of a newest-day key: the same minutes of the
    latest earlier days that have them (0: the spine has no earlier day with those minutes)."""

    def encode(self) -> str:
        """One compact string for the footer's key-value metadata."""
        text = json.dumps(
            {
                "version": _VERSION,
                "spine_rows": self.spine_rows,
                "first_key": self.first_key,
                "last_key": self.last_key,
                "newest_from": self.newest_from,
                "newest_rows": self.newest_rows,
                "reference_rows": self.reference_rows,
                "tables": [t.to_json() for t in self.tables],
            },
            separators=(",", ":"),
        )
        if len(text) <= _COMPRESS_ABOVE:
            return text
        data = text.encode()
        packed = pa.compress(data, codec="zstd", asbytes=True)
        return f"{_ZSTD}{len(data)}:{base64.b64encode(packed).decode()}"

    @classmethod
    def decode(cls, value: str | bytes) -> Coverage:
        text = value.decode() if isinstance(value, bytes) else value
        if text.startswith(_ZSTD):
            size, _, packed = text[len(_ZSTD) :].partition(":")
            raw = pa.decompress(
                base64.b64decode(packed), decompressed_size=int(size), codec="zstd", asbytes=True
            )
            text = raw.decode()
        data = json.loads(text)
        if data.get("version") != _VERSION:
            raise CoverageVersionError(
                f"coverage record version {data.get('version')}, expected {_VERSION} (a file "
                "written by another version of the merge: build it again)"
            )
        return cls(
            int(data["spine_rows"]),
            int(data["first_key"]),
            int(data["last_key"]),
            int(data["newest_from"]),
            int(data["newest_rows"]),
            tuple(TableCoverage.from_json(row) for row in data["tables"]),
            int(data["reference_rows"]),
        )

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None) -> Coverage | None:
        """The record of a parquet file's key-value metadata, None when it has none."""
        value = (metadata or {}).get(COVERAGE_KEY.encode())
        return None if value is None else cls.decode(value)

    def table_of_column(self) -> dict[int, TableCoverage]:
        return {t.first_column + i: t for t in self.tables for i in range(t.columns)}


def iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC).isoformat()


_MINUTE_US = 60 * 1_000_000
_GRID_SPAN = 4
"""A spine is looked up on its minute grid while the grid has at most this many slots per spine
key (a spine of trading minutes has ~1.4: weekends)."""


@dataclass(frozen=True)
class SpineIndex:
    """The spine's keys (int64 microseconds, unique, as the merge checks), indexed
    once per merge to find which of them a table's keys hold.

    Where every spine key is a whole minute after the first, the keys are looked up on that
    grid: a table's key is a slot number, one gather each, instead of a binary search of the
    spine's keys in the table's (~2 ms a table at production length, 667 tables a merge)."""

    keys: np.ndarray
    slots: np.ndarray | None
    """Position in the spine of each grid minute's key from the first key on, -1 where the spine
    has none; None: the keys are not on a minute grid (searched instead)."""
    first: int = 0
    """The smallest key: the grid's first minute."""

    @classmethod
    def of(cls, keys: np.ndarray) -> SpineIndex:
        slots, first = None, 0
        if len(keys):
            first = int(keys.min())
            offsets = keys - first
            span = int(offsets.max()) // _MINUTE_US + 1
            if span <= _GRID_SPAN * len(keys) and not np.any(offsets % _MINUTE_US):
                slots = np.full(span, -1, dtype=np.int64)
                slots[offsets // _MINUTE_US] = np.arange(len(keys))
        return cls(keys, slots, first)

    def matched(self, file_keys: np.ndarray) -> np.ndarray:
        """Which spine keys `file_keys` (int64 microseconds, any order) hold, as a mask."""
        found = np.zeros(len(self.keys), dtype=bool)
        if not len(file_keys) or not len(self.keys):
            return found
        if self.slots is not None:
            offsets = file_keys - self.first
            minutes, off_grid = np.divmod(offsets, _MINUTE_US)
            inside = (offsets >= 0) & (minutes < len(self.slots)) & (off_grid == 0)
            at = self.slots[minutes[inside]]
            found[at[at >= 0]] = True
            return found
        return _holds(_sorted(file_keys), self.keys)

    def positions(self, wanted: np.ndarray) -> np.ndarray:
        """The spine position of each of `wanted` (int64 microseconds), -1 where the spine has no
        such key."""
        out = np.full(len(wanted), -1, dtype=np.int64)
        if not len(wanted) or not len(self.keys):
            return out
        if self.slots is not None:
            offsets = wanted - self.first
            minutes, off_grid = np.divmod(offsets, _MINUTE_US)
            inside = (offsets >= 0) & (minutes < len(self.slots)) & (off_grid == 0)
            out[inside] = self.slots[minutes[inside]]
            return out
        order = np.argsort(self.keys, kind="stable")
        ordered = self.keys[order]
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        hit = ordered[at] == wanted
        out[hit] = order[at[hit]]
        return out

    @cached_property
    def reference(self) -> np.ndarray:
        """For each spine key, the position of its reference minute: the same minute of the day
        on the latest earlier day (up to REFERENCE_DAYS back) that the spine has it, -1 where
        none has. What a minute is judged against: Monday 10:00's is Friday 10:00, not the
        Sunday of the FX weekend; a minute in the spine's first day has none."""
        out = np.full(len(self.keys), -1, dtype=np.int64)
        for days in range(1, REFERENCE_DAYS + 1):
            left = np.flatnonzero(out < 0)
            if not len(left):
                break
            out[left] = self.positions(self.keys[left] - days * _DAY_US)
        return out


def _sorted(keys: np.ndarray) -> np.ndarray:
    return keys if bool(np.all(keys[1:] > keys[:-1])) else np.sort(keys)


def _holds(ordered: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which of `wanted` the sorted `ordered` holds, as a mask."""
    if not len(ordered):
        return np.zeros(len(wanted), dtype=bool)
    pos = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
    return ordered[pos] == wanted


@dataclass(frozen=True)
class CountedRows:
    """The spine rows whose nulls the merge counts per column as it writes them: the newest
    day's, and the reference minutes of those (what `newest_rows` judges them against)."""

    newest_start: int
    """Position of the newest day's first row in the spine."""
    reference: np.ndarray
    """Sorted spine positions of the newest day's reference minutes."""

    @classmethod
    def of(cls, spine: SpineIndex, newest_from: int) -> CountedRows:
        start = int(np.searchsorted(spine.keys, newest_from))
        reference = spine.reference[start:]
        return cls(start, np.sort(reference[reference >= 0]))

    def within(self, a: int, b: int) -> tuple[int, np.ndarray]:
        """Of spine rows a..b: the offset from a where the newest day starts (b - a: it does not)
        and the offsets of the reference rows."""
        lo, hi = np.searchsorted(self.reference, [a, b])
        return min(max(self.newest_start - a, 0), b - a), self.reference[lo:hi] - a

    def spans(self, rows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The runs of consecutive reference rows inside the spine rows `rows` (a..b each)."""
        inside = np.zeros(len(self.reference), dtype=bool)
        for a, b in rows:
            inside |= (self.reference >= a) & (self.reference < b)
        chosen = self.reference[inside]
        if not len(chosen):
            return []
        breaks = np.flatnonzero(np.diff(chosen) != 1) + 1
        return [(int(run[0]), int(run[-1]) + 1) for run in np.split(chosen, breaks)]


def table_coverage_of(
    table: str,
    first_column: int,
    source_rows: int,
    file_keys: np.ndarray,
    spine: SpineIndex,
    newest_from: int,
    source_nulls: Sequence[int],
) -> TableCoverage:
    """A table's coverage from its key column (int64 microseconds) and the spine's (in key
    order). `newest_nulls` and `reference_nulls` start at zero: the merge adds the nulls of
    each piece of the counted rows as it writes them (`CountedRows`)."""
    spine_keys = spine.keys
    found = spine.matched(file_keys)
    hits = np.flatnonzero(found)
    newest = int(np.searchsorted(spine_keys, newest_from))
    tail_from = int(hits[-1]) + 1 if len(hits) else 0
    # A tail minute is due when the table had its reference minute.
    tail_reference = spine.reference[tail_from:]
    due = found[tail_reference[tail_reference >= 0]]
    newest_reference = spine.reference[newest:]
    return TableCoverage(
        table=table,
        first_column=first_column,
        columns=len(source_nulls),
        source_rows=source_rows,
        matched=len(hits),
        first_key=int(spine_keys[hits[0]]) if len(hits) else None,
        last_key=int(spine_keys[hits[-1]]) if len(hits) else None,
        newest_matched=int(found[newest:].sum()),
        tail_missing=len(spine_keys) - tail_from,
        tail_expected=int(due.sum()),
        longest_gap=int(np.diff(hits).max()) - 1 if len(hits) > 1 else 0,
        source_nulls=tuple(int(v) for v in source_nulls),
        newest_nulls=(0,) * len(source_nulls),
        reference_matched=int(found[newest_reference[newest_reference >= 0]].sum()),
        reference_nulls=(0,) * len(source_nulls),
    )
