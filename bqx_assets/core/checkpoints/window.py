"""The training window, and the chunks a table is cut into: a month per closed month, a day per
day of the newest month."""

# Why a month per closed month and a day per day of the newest, and how a rolling window is
# planned: docs/design/checkpoints.md.

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from bqx_assets.core.catalog import TargetsTable
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.errors import ExtractionError, WindowError
from bqx_assets.core.warehouse import Cut, DateRange, PartitionStates, Warehouse

ChunkGrain = Literal["month", "day"]
CHUNK_GRAINS: tuple[ChunkGrain, ...] = ("month", "day")
DEFAULT_GRAIN: ChunkGrain = "month"
ALL_TIME = DateRange()
ONE_DAY = timedelta(days=1)


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def utc(value: datetime) -> datetime:
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
        return self.start == day_start(self.first) and self.end == day_start(
            self.last + timedelta(days=1)
        )

    def holds(self, day: date) -> bool:
        return self.first <= day <= self.last


def in_window(day: date, window: DateRange) -> bool:
    start, end = day_start(day), day_start(day + timedelta(days=1))
    return (window.start is None or end > utc(window.start)) and (
        window.end is None or start < utc(window.end)
    )


def clip(first: date, last: date, window: DateRange) -> ChunkRange:
    start, end = day_start(first), day_start(last + timedelta(days=1))
    if window.start is not None:
        start = max(start, utc(window.start))
    if window.end is not None:
        end = min(end, utc(window.end))
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
            out[(day, day)] = clip(day, day, window)
        elif (day.year, day.month) != month:  # days are in order: a month's first one
            month = (day.year, day.month)
            first, last = _month_bounds(day)
            out[(first, last)] = clip(first, last, window)
    return [r for r in out.values() if after is None or utc(r.end) > utc(after)]


def _days_in_window(days: Iterable[date], window: DateRange) -> set[date]:
    """The distinct `days` with a moment inside `window` (as `in_window`, bounds computed once:
    a table at production length has ~150 days, a refresh ~670 tables)."""
    distinct = set(days)
    if window.start is None and window.end is None:
        return distinct
    start = utc(window.start) if window.start is not None else None
    end = utc(window.end) if window.end is not None else None
    return {
        d
        for d in distinct
        if (start is None or day_start(d + ONE_DAY) > start) and (end is None or day_start(d) < end)
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
        if self.start is not None and self.end is not None and utc(self.start) >= utc(self.end):
            raise WindowError(
                f"the training window's start ({self.start.isoformat()}) is not before its end "
                f"({self.end.isoformat()}): no row would be in it"
            )

    @classmethod
    def parse(
        cls, start: str | None = None, end: str | None = None, days: int | None = None
    ) -> TrainingWindow:
        """From settings' text: ISO dates or times, read as UTC where they give no offset (one
        they give is converted, not replaced)."""

        def when(text: str | None, what: str) -> datetime | None:
            try:
                return utc(datetime.fromisoformat(text)) if text else None
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
        return f"{window_list(DateRange(self.start, self.end))}"


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
    day (docs/design/checkpoints.md)."""

    training: DateRange
    rolling: bool = False

    def for_table(self, spine: bool, grain: ChunkGrain = DEFAULT_GRAIN) -> TableWindow:
        """The chunk window of the spine (targets) table or of a feature table."""
        start = self.training.start
        if not self.rolling or start is None:
            return TableWindow(self.training, grain)
        if spine:
            return TableWindow(self.training, "day")
        first = utc(start).date()
        aligned = day_start(first.replace(day=1)) if grain == "month" else day_start(first)
        return TableWindow(DateRange(aligned, self.training.end), grain, after=start)


Window = DateRange | ResolvedWindow
"""What refresh and merge take: a date range cutting every table alike, or a resolved window."""


def table_window(window: Window, source: Source, grain: ChunkGrain = DEFAULT_GRAIN) -> TableWindow:
    if isinstance(window, DateRange):
        return TableWindow(window, grain)
    return window.for_table(isinstance(source, TargetsTable), grain)


def newest_days_start(days: Sequence[date], window: TrainingWindow, where: str) -> datetime:
    """The first of the newest `window.days` days with rows (before `window.end`)."""
    end = utc(window.end) if window.end is not None else None
    eligible = sorted(d for d in set(days) if end is None or day_start(d) < end)
    if not eligible:
        raise WindowError(f"{where} has no day with rows for {window.describe()}")
    return day_start(eligible[-(window.days or 1) :][0])


def resolve_window(
    warehouse: Warehouse,
    spines: Sequence[TargetsTable],
    window: TrainingWindow,
    *,
    cut: Cut | None = None,
    known: Mapping[str, PartitionStates] | None = None,
) -> ResolvedWindow:
    """The window a run uses: a fixed one as it is; a rolling one from the day partitions of the
    pairs' targets tables `spines` as of `cut` (one look-up per dataset, or the caller's
    `known` ones, by dataset), starting at the earliest of their windows' first days (the
    shared tables serve every pair). A pair whose targets table is missing is left out (its
    own step fails naming it); none found is a WindowError."""
    if not window.rolling:
        return ResolvedWindow(DateRange(window.start, window.end))
    if not spines:
        raise WindowError(f"{window.describe()}: no targets table to count trading days in")
    starts, missing = [], []
    for dataset in sorted({t.dataset for t in spines}):
        names = sorted(t.name for t in spines if t.dataset == dataset)
        found = (known or {}).get(dataset)
        if found is None:
            found = warehouse.partition_states(dataset, names, cut=cut)
        missing += [f"{dataset}.{n}" for n in names if n not in found and n not in found.errors]
        missing += [f"{dataset}.{n} ({why})" for n, why in found.errors.items()]
        for name in (n for n in names if n in found):
            days = [p.day for p in found[name] if p.rows > 0]
            starts.append(newest_days_start(days, window, f"{dataset}.{name}"))
    if not starts:
        raise WindowError(
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: not found in the "
            f"warehouse, whose days the rolling training window ({window.describe()}) counts"
        )
    return ResolvedWindow(DateRange(min(starts), window.end), rolling=True)


def window_list(window: DateRange) -> list[str | None]:
    return [w.isoformat() if w else None for w in (window.start, window.end)]


def micros(value: datetime) -> int:
    return int((utc(value) - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
