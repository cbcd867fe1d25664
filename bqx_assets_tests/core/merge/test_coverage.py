"""Which spine keys a table holds (the minute-grid look-up against a plain search), each minute's
reference minute, and what the merge counts of the newest day and its reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bqx_assets.core.merge.coverage import (
    CountedRows,
    SpineIndex,
    TableCoverage,
    newest_day_start,
    table_coverage_of,
)
from bqx_assets.core.storage import LocalFile
from bqx_assets_tests.core.merge.conftest import Appended
from bqx_assets_tests.core.merge.helpers import merge_pair

MINUTE = 60_000_000
DAY = 1440 * MINUTE


def _trading_minutes(rng: np.random.Generator, days: int) -> np.ndarray:
    """Minutes of weekdays from 2024-01-01 (a Monday), a few dropped at random."""
    start = 19_723 * DAY
    keys = np.arange(days * 1440, dtype=np.int64) * MINUTE + start
    weekday = ((keys - start) // DAY) % 7 < 5
    return keys[weekday & (rng.random(len(keys)) > 0.01)]


def _searched(spine: np.ndarray, file_keys: np.ndarray) -> np.ndarray:
    return np.isin(spine, file_keys)


def test_a_table_s_keys_are_found_on_the_spine_s_minute_grid_as_a_search_finds_them() -> None:
    rng = np.random.default_rng(7)
    spine = _trading_minutes(rng, 30)
    index = SpineIndex.of(spine)
    assert index.slots is not None  # trading minutes: looked up on the grid
    table = np.concatenate(
        [
            rng.choice(spine, size=len(spine) // 2, replace=False),  # any order
            spine[:5] - DAY,  # before the spine
            spine[-5:] + DAY,  # after it
            spine[100:110] + 1,  # between two minutes: not a spine key
            spine[200:210] + MINUTE // 2,
            [spine[-1] + 7 * DAY],  # far past the grid's end
        ]
    ).astype(np.int64)
    np.testing.assert_array_equal(index.matched(table), _searched(spine, table))
    assert index.matched(table).sum() == len(spine) // 2
    # A spine in another order than its keys' (its rows are written in spine order).
    shuffled = rng.permutation(spine)
    np.testing.assert_array_equal(
        SpineIndex.of(shuffled).matched(table), _searched(shuffled, table)
    )
    assert not index.matched(np.zeros(0, dtype=np.int64)).any()


@pytest.mark.parametrize(
    "spine",
    [
        np.array([0, 30_000_000, MINUTE, 2 * MINUTE], dtype=np.int64),  # half minutes
        np.array([0, MINUTE, 365 * DAY], dtype=np.int64),  # a grid far larger than the spine
    ],
    ids=["off the minute grid", "sparse"],
)
def test_a_spine_off_a_compact_minute_grid_is_searched(spine: np.ndarray) -> None:
    index = SpineIndex.of(spine)
    assert index.slots is None
    table = np.array([spine[-1], spine[0], spine[1] + 1], dtype=np.int64)
    np.testing.assert_array_equal(index.matched(table), _searched(spine, table))


# -- reference minutes: what a newest or a missing minute is judged against -------------------
MONDAY = 19_723 * DAY  # 2024-01-01


def _weekdays(first_day: int, days: int) -> np.ndarray:
    """Every minute of `days` days from day `first_day` after MONDAY, weekends left out."""
    keys = MONDAY + first_day * DAY + np.arange(days * 1440, dtype=np.int64) * MINUTE
    return keys[((keys - MONDAY) // DAY) % 7 < 5]


def test_a_minutes_reference_is_the_same_minute_of_the_latest_earlier_day_the_spine_has() -> None:
    spine = _weekdays(0, 8)  # Monday to Friday, then Monday
    index = SpineIndex.of(spine)
    reference = index.reference
    at = {int(k): i for i, k in enumerate(spine)}
    tuesday_10 = at[MONDAY + DAY + 10 * 60 * MINUTE]
    assert reference[tuesday_10] == at[MONDAY + 10 * 60 * MINUTE]  # the day before
    monday_10 = at[MONDAY + 7 * DAY + 10 * 60 * MINUTE]
    assert reference[monday_10] == at[MONDAY + 4 * DAY + 10 * 60 * MINUTE]  # Friday, not Sunday
    assert (reference[:1440] == -1).all()  # the spine's first day has no earlier one
    assert (reference[1440:] >= 0).all()
    # Off the minute grid too (searched): the same positions.
    searched = SpineIndex(spine, None, 0)
    np.testing.assert_array_equal(searched.reference, reference)
    wanted = np.array([spine[5], spine[0] - DAY, spine[7] + 1], dtype=np.int64)
    np.testing.assert_array_equal(searched.positions(wanted), [5, -1, -1])
    np.testing.assert_array_equal(index.positions(wanted), [5, -1, -1])


def _coverage(spine: np.ndarray, table: np.ndarray) -> TableCoverage:
    index = SpineIndex.of(spine)
    return table_coverage_of("t", 1, len(table), table, index, newest_day_start(spine), [0])


def _hours(keys: np.ndarray, start: int, stop: int) -> np.ndarray:
    minute = (keys // MINUTE) % 1440
    return keys[(minute >= start * 60) & (minute < stop * 60)]


def test_a_table_that_stops_at_its_daily_close_is_not_due_its_missing_minutes() -> None:
    # The spine ends Tuesday 23:59; an ETF table quotes 08:00-20:00 and stopped at Tuesday's
    # close: its last four hours it never had on Monday.
    spine = _weekdays(0, 2)
    etf = _coverage(spine, _hours(spine, 8, 20))
    assert (etf.tail_missing, etf.tail_expected) == (4 * 60, 0)
    # The same table stopped at Tuesday noon: eight hours it had on Monday are due.
    noon = _hours(spine, 8, 20)
    stopped = _coverage(spine, noon[noon < MONDAY + DAY + 12 * 60 * MINUTE])
    assert (stopped.tail_missing, stopped.tail_expected) == (12 * 60, 8 * 60)


def test_a_spine_of_one_morning_has_no_minute_due_before_it_has_an_earlier_day() -> None:
    # The 1,500 rows from Monday 00:00: Monday 20:00 to Tuesday 00:59 missing from an
    # ETF table. Monday's evening has no earlier day in the spine; Tuesday 00:00-00:59 had
    # Monday's, where the ETF had no row either.
    spine = _weekdays(0, 2)[:1500]
    etf = _coverage(spine, _hours(spine, 8, 20))
    assert (etf.tail_missing, etf.tail_expected) == (300, 0)
    assert (etf.reference_matched, etf.newest_matched) == (0, 0)
    # A table with a row every minute that stopped an hour early: those minutes are due.
    every = _coverage(spine, spine[:-60])
    assert (every.tail_missing, every.tail_expected) == (60, 60)


def test_a_source_that_went_stale_over_the_weekend_is_due_mondays_minutes() -> None:
    # Friday's rows, none on Monday: Monday's minutes are judged against Friday's, not against
    # the closed Sunday (the day before).
    spine = _weekdays(0, 8)
    stale = _coverage(spine, spine[spine < MONDAY + 7 * DAY])
    assert stale.tail_missing == 1440 and stale.tail_expected == 1440


def test_the_counted_rows_are_the_newest_day_and_its_reference_minutes() -> None:
    spine = _weekdays(0, 8)[: 6 * 1440 - 60]  # Monday to Friday, then Monday to 23:00
    counted = CountedRows.of(SpineIndex.of(spine), newest_day_start(spine))
    assert counted.newest_start == 5 * 1440
    friday = np.arange(4 * 1440, 5 * 1440 - 60)  # Friday 00:00-22:59
    np.testing.assert_array_equal(counted.reference, friday)
    start, reference = counted.within(4 * 1440 + 100, 5 * 1440 + 10)
    assert start == 1440 - 100  # where the newest day starts in those rows
    np.testing.assert_array_equal(reference, friday[100:] - (4 * 1440 + 100))
    assert counted.within(0, 1440)[0] == 1440 and not len(counted.within(0, 1440)[1])
    assert counted.spans([(4 * 1440 + 10, 4 * 1440 + 20), (0, 5)]) == [
        (4 * 1440 + 10, 4 * 1440 + 20)
    ]


def test_reference_minutes_in_a_copied_row_group_are_counted_from_the_chunks(
    appended: Appended, tmp_path: Path
) -> None:
    """The appended Monday's reference minutes are Friday's, in a row group the refresh copies
    from the previous file without encoding it: their nulls are read from the chunks, the same
    counts a merge from scratch makes while encoding them."""
    scratch = appended.scratch_report.coverage
    assert scratch is not None and scratch.reference_rows == 1440
    refreshed = merge_pair(
        appended.storage(), appended.catalog, tmp_path / "refreshed.parquet",
        previous=LocalFile(appended.first),
    )  # fmt: skip
    assert refreshed.row_groups_reused == 2  # January, and February 1 to 2 (Friday)
    assert refreshed.coverage == scratch
    counted = [t for t in scratch.tables if any(t.reference_nulls)]
    assert counted  # the reference minutes hold nulls to count (warm-ups, the ETF's hours)
    assert all(t.reference_matched <= scratch.reference_rows for t in scratch.tables)
