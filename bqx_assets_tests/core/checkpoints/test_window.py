"""Chunk ranges (a month per closed month, a day per day of the newest) and the training window:
fixed or the last N trading days, resolved from the targets' partitions, moving with an appended
day and reading and merging only the chunks it overlaps."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.checkpoints.select import require_chunks, stored_window
from bqx_assets.core.checkpoints.window import (
    ResolvedWindow,
    TableWindow,
    TrainingWindow,
    chunk_ranges,
    resolve_window,
    table_window,
)
from bqx_assets.core.errors import ExtractionError, WindowError
from bqx_assets.core.layout import KEY
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import Cut, DateRange, PartitionStates
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS
from bqx_assets_tests.core.checkpoints.conftest import (
    DAY,
    PAIR,
    CountingWarehouse,
    assert_same,
    days_of,
    merged,
    pair_sources,
    utc,
)

JAN = [date(2024, 1, d) for d in (29, 30, 31)]
FEB = [date(2024, 2, d) for d in (1, 2, 4)]
"""Thursday; Friday until the FX weekend (22:00); Sunday from 22:00: trading days appended."""


# -- chunk ranges ---------------------------------------------------------------------------
def test_chunk_layout_months_closed_days_open() -> None:
    days = [*JAN, date(2024, 2, 1), date(2024, 2, 2)]
    ranges = chunk_ranges(days, DateRange())
    assert [(r.first, r.last) for r in ranges] == [
        (date(2024, 1, 1), date(2024, 1, 31)),
        (date(2024, 2, 1), date(2024, 2, 1)),
        (date(2024, 2, 2), date(2024, 2, 2)),
    ]
    # A month chunk reads its calendar bounds, whole: its rows are its days' rows.
    assert (ranges[0].start, ranges[0].end) == (utc(date(2024, 1, 1)), utc(date(2024, 2, 1)))
    assert all(r.whole for r in ranges)
    assert len(chunk_ranges(days, DateRange(), "day")) == 5
    # The window cuts chunks: the January chunk starts at the window, February 2 is left out.
    window = DateRange(datetime(2024, 1, 30, 12, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC))
    cut = chunk_ranges(days, window)
    assert (cut[0].start, cut[0].end) == (window.start, datetime(2024, 2, 1, tzinfo=UTC))
    assert [r.first for r in cut] == [date(2024, 1, 1), date(2024, 2, 1)]
    assert not cut[0].whole and cut[1].whole
    # `after` (a rolling window's first day) leaves out the chunks that end at or before it.
    after = chunk_ranges(days, DateRange(), after=utc(date(2024, 2, 1)))
    assert [r.first for r in after] == [date(2024, 2, 1), date(2024, 2, 2)]
    # Unordered, repeated days give the same chunks; no day in the window gives none.
    assert chunk_ranges([*reversed(days), *days], DateRange()) == ranges
    assert chunk_ranges(days, DateRange(start=utc(date(2024, 3, 1)))) == []


def test_an_unknown_grain_is_refused_by_name() -> None:
    with pytest.raises(ExtractionError, match="chunk grain 'week' is not one of month, day"):
        chunk_ranges(JAN, DateRange(), "week")  # type: ignore[arg-type]


# -- the configured window ------------------------------------------------------------------
def test_a_start_and_a_rolling_length_together_are_one_error() -> None:
    with pytest.raises(WindowError, match=r"both a start .* and a rolling length \(5 trading"):
        TrainingWindow(start=utc(JAN[0]), days=5)
    with pytest.raises(WindowError, match="BQX_WINDOW_START or BQX_WINDOW_DAYS"):
        TrainingWindow.parse(start="2024-01-30", days=2)
    with pytest.raises(WindowError, match="at least 1 day, not 0"):
        TrainingWindow(days=0)
    with pytest.raises(WindowError, match="window start 'monday' is not an ISO date or time"):
        TrainingWindow.parse(start="monday")
    with pytest.raises(WindowError, match=r"start \(2024-02-01T00:00:00\+00:00\) is not before"):
        TrainingWindow.parse(start="2024-02-01", end="2024-01-30")
    parsed = TrainingWindow.parse(start="2024-01-30", end="2024-02-01T12:00")
    assert parsed == TrainingWindow(utc(JAN[1]), datetime(2024, 2, 1, 12, tzinfo=UTC))
    # Read as UTC where no offset is given; an offset given is converted, not dropped.
    zoned = TrainingWindow.parse(start="2024-01-30T02:00+02:00")
    assert zoned.start == utc(JAN[1]) and zoned.start.tzinfo == UTC
    assert not parsed.rolling and TrainingWindow.parse(days=3).rolling
    assert TrainingWindow(days=2, end=utc(JAN[2])).describe() == (
        "the last 2 trading days before 2024-01-31T00:00:00+00:00"
    )


def test_a_resolved_window_gives_the_spine_day_chunks_and_feature_tables_whole_chunks(
    mini: tuple[Catalog, Path],
) -> None:
    catalog, _ = mini
    start = datetime(2024, 1, 30, tzinfo=UTC)
    rolling = ResolvedWindow(DateRange(start), rolling=True)
    spine, table = catalog.targets[PAIR], catalog.table(f"agg_{PAIR}")
    assert table_window(rolling, spine) == TableWindow(DateRange(start), "day")
    # A feature table's chunks from the start of the month holding the window's first day,
    # those ending at or before that day left out: its first chunk stays whole.
    month = TableWindow(DateRange(utc(date(2024, 1, 1))), "month", after=start)
    assert table_window(rolling, table) == month
    assert table_window(rolling, table, "day") == TableWindow(DateRange(start), "day", start)
    # A fixed window, or a date range, cuts every table alike.
    fixed = ResolvedWindow(DateRange(start))
    assert table_window(fixed, spine) == table_window(fixed, table) == TableWindow(fixed.training)
    assert table_window(DateRange(start), spine) == TableWindow(DateRange(start))


# -- resolved from the warehouse --------------------------------------------------------------
class NoDays(EmbeddedWarehouse):
    """A warehouse that knows the tables but reports no day partition of them."""

    def partition_states(
        self, dataset: str, tables: Sequence[str], *, cut: Cut | None = None
    ) -> PartitionStates:
        return PartitionStates({name: () for name in super().partition_states(dataset, tables)})


def test_the_rolling_start_is_the_earliest_of_the_pairs_found_or_one_clear_error(
    mini: tuple[Catalog, Path], three_days: Path
) -> None:
    catalog, _ = mini
    spines = [catalog.targets[p] for p in MINI_PAIRS]
    gone = dataclasses.replace(catalog.targets[PAIR], name="targets_nopair")
    window = TrainingWindow(days=2, end=utc(JAN[2]))
    wh = EmbeddedWarehouse(three_days)
    try:
        # The window's end bounds the days counted: Monday and Tuesday before Wednesday. A pair
        # whose targets table is missing is left out (its own step fails naming it).
        resolved = resolve_window(wh, [*spines, gone], window)
        assert resolved.rolling and resolved.training == DateRange(utc(JAN[0]), utc(JAN[2]))
        assert resolve_window(wh, spines, TrainingWindow(days=2)).training == DateRange(utc(JAN[1]))
        # More days asked for than there are: all of them.
        assert resolve_window(wh, spines, TrainingWindow(days=30)).training.start == utc(JAN[0])
        with pytest.raises(WindowError, match=r"targets_nopair: not found in the warehouse"):
            resolve_window(wh, [gone], window)
        with pytest.raises(WindowError, match=r"no day with rows for the last 2 trading days"):
            resolve_window(wh, spines, TrainingWindow(days=2, end=utc(JAN[0])))
        with pytest.raises(WindowError, match="no targets table to count trading days in"):
            resolve_window(wh, [], window)
    finally:
        wh.close()
    flat = NoDays(three_days)
    try:
        with pytest.raises(WindowError, match=rf"targets_{PAIR} has no day with rows"):
            resolve_window(flat, spines, window)
        # A fixed window is taken as it is: the warehouse is not asked.
        fixed = TrainingWindow(start=utc(JAN[1]))
        assert resolve_window(flat, spines, fixed) == ResolvedWindow(DateRange(utc(JAN[1])))
    finally:
        flat.close()


def _append_day(wh: CountingWarehouse) -> None:
    wh.append(DAY)


def _keys(data: pa.Table) -> list[datetime]:
    return data.column(KEY).to_pylist()


def _targets_rows(wh: EmbeddedWarehouse, catalog: Catalog, first: date, end: date) -> pa.Table:
    targets = catalog.targets[PAIR]
    names = [KEY, *targets.targets]
    return wh.read(targets.dataset, targets.name, names, DateRange(utc(first), utc(end))).data


def test_a_rolling_window_reads_and_merges_only_the_chunks_it_overlaps(
    mini: tuple[Catalog, Path], warehouse: CountingWarehouse, tmp_path: Path
) -> None:
    catalog, _ = mini
    sources = pair_sources(catalog)
    spine = catalog.targets[PAIR]
    storage = LocalStorage(tmp_path / "ckpt")
    window = TrainingWindow(days=2)

    def refresh() -> tuple[list[tuple[str, DateRange]], datetime | None]:
        warehouse.reads.clear()
        resolved = resolve_window(warehouse, [spine], window)
        refresh_tables(warehouse, sources, storage, window=resolved, threads=2)
        return [(t, w) for t, w, _, _ in warehouse.reads], resolved.training.start

    # Monday to Wednesday: the last two days are Tuesday and Wednesday. The pair's tables
    # (January is their newest month, cut by day) never read Monday, whose chunk ends where the
    # window starts; shared tables run into February, so their January is a closed month whose
    # chunk holds the window's start and is read whole, to stay whole as the window moves.
    reads, start = refresh()
    assert start == utc(JAN[1])
    shared = {t.name for t in catalog.shared_tables()}
    assert {w.start for t, w in reads if t not in shared} == {utc(JAN[1])}
    assert {w.start for t, w in reads if t in shared} == {utc(JAN[0].replace(day=1))}
    data = merged(storage, catalog, tmp_path / "a", stored_window(storage, spine, window))
    assert days_of(data) == set(JAN[1:])
    assert _keys(data) == _keys(_targets_rows(warehouse, catalog, JAN[1], FEB[0]))

    # Thursday appended: the window moves to Wednesday and Thursday; Tuesday drops out.
    _append_day(warehouse)
    reads, start = refresh()
    assert start == utc(JAN[2])
    # One spine read from Wednesday (the append completed its last targets, which look ahead
    # into Thursday) through Thursday; Tuesday's day chunk is neither read nor merged.
    assert {w.start for t, w in reads if t == spine.name} == {utc(JAN[2])}
    data = merged(storage, catalog, tmp_path / "b", stored_window(storage, spine, window))
    assert days_of(data) == {JAN[2], FEB[0]}
    assert _keys(data) == _keys(_targets_rows(warehouse, catalog, JAN[2], FEB[1]))

    # Friday and Sunday appended: the window is those two days, and January's chunks, which
    # end before it, are neither read nor merged; Thursday's chunks are not read either.
    _append_day(warehouse)
    reads, start = refresh()
    assert start == utc(FEB[1])
    assert reads and all(w.start >= utc(FEB[1]) for _, w in reads)
    resolved = stored_window(storage, spine, window)
    chosen = require_chunks(storage, sources, resolved, f"pair {PAIR}")
    assert not any("2024-01" in key for chunks in chosen.values() for key, _ in chunks)
    data = merged(storage, catalog, tmp_path / "c", resolved)
    assert days_of(data) == set(FEB[1:])

    # The same window from scratch: the same training file.
    scratch = LocalStorage(tmp_path / "scratch")
    refresh_tables(warehouse, sources, scratch, window=resolve_window(warehouse, [spine], window))
    resolved = stored_window(scratch, spine, window)
    assert_same(data, merged(scratch, catalog, tmp_path / "d", resolved))
