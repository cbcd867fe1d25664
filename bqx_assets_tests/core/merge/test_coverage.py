"""Which spine keys a table holds: the minute-grid look-up against a plain search."""

from __future__ import annotations

import numpy as np
import pytest

from bqx_assets.core.merge.coverage import SpineIndex

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
