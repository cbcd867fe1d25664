"""The warehouse interface's own logic: the cut a step is given to agree with earlier steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bqx_assets.core.warehouse.base import CUT_MAX_AGE, Cut

NOW = datetime(2024, 2, 1, 12, tzinfo=UTC)


def test_the_common_cut_is_the_oldest_one_a_snapshot_can_still_read() -> None:
    hour = timedelta(hours=1)
    assert Cut.common([NOW - hour, NOW - 3 * hour], NOW) == Cut(NOW - 3 * hour)
    # In another zone: the same moment, in UTC.
    assert Cut.common([(NOW - hour).astimezone()], NOW) == Cut(NOW - hour)
    # None recorded, or the oldest past BigQuery's time travel: the step takes its own.
    assert Cut.common([], NOW) is None
    assert Cut.common([NOW - CUT_MAX_AGE - hour, NOW - hour], NOW) is None
    assert Cut.common([NOW - CUT_MAX_AGE], NOW) == Cut(NOW - CUT_MAX_AGE)
