"""Data versions of warehouse tables: they change when a day a chunk would hold changes, not when
a day outside the window does; per family as the observable sources record them."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from bqx_assets.core.catalog import TARGETS_FAMILY, Catalog
from bqx_assets.core.checkpoints.versions import family_versions, partitions_version
from bqx_assets.core.checkpoints.window import ResolvedWindow, TrainingWindow, table_window
from bqx_assets.core.warehouse import DateRange, PartitionState
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.builders import correct_day
from bqx_assets_tests.conftest import Warehouses
from bqx_assets_tests.core.checkpoints.conftest import PAIR, START, utc

JAN = [date(2024, 1, d) for d in (29, 30, 31)]


def _states(*changed: date) -> dict[str, tuple[PartitionState, ...]]:
    """Two tables' January 29 to 31, the `changed` days of the first one modified later."""

    def day(d: date, table: int) -> PartitionState:
        late = table == 0 and d in changed
        return PartitionState(d, 1440, f"2024-02-0{2 if late else 1}T00:00:00+00:00")

    return {name: tuple(day(d, i) for d in JAN) for i, name in enumerate(("agg", "mom"))}


def test_the_data_version_follows_the_days_a_window_reads(mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    base = partitions_version(_states(), expected=2)
    assert partitions_version(_states(), expected=2) == base
    assert partitions_version(_states(JAN[0]), expected=2) != base
    # A fixed window: a change outside it changes nothing.
    tuesday_on = DateRange(utc(JAN[1]))
    assert partitions_version(_states(JAN[0]), 2, tuesday_on) == partitions_version(
        _states(), 2, tuesday_on
    )
    assert partitions_version(_states(JAN[1]), 2, tuesday_on) != partitions_version(
        _states(), 2, tuesday_on
    )
    # The last two days, as the feature tables' chunks would hold them: a corrected Monday
    # (no chunk of the window holds it) changes nothing, a corrected Tuesday does.
    rolling = ResolvedWindow(DateRange(utc(JAN[1])), rolling=True)
    chunks = table_window(rolling, catalog.table(f"agg_{PAIR}"))
    unchanged = partitions_version(_states(), 2, chunks)
    assert partitions_version(_states(JAN[0]), 2, chunks) == unchanged
    assert partitions_version(_states(JAN[1]), 2, chunks) != unchanged
    # Tables missing: said in the version, which changes when they come.
    assert partitions_version(_states(), expected=3).startswith("missing-1-")
    assert partitions_version(_states(), expected=3) != base


def test_each_family_s_version_changes_with_its_own_tables_only(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    path = warehouses.copy(
        tmp_path / "w.duckdb", catalog, pairs=[PAIR, "gbpusd"], rows=3 * 1440, start=START
    )
    families = ["agg", "div", TARGETS_FAMILY]

    def versions() -> dict[str, tuple[str, int]]:
        wh = EmbeddedWarehouse(path)
        try:
            return family_versions(wh, catalog, PAIR, families, TrainingWindow())
        finally:
            wh.close()

    before = versions()
    assert {f: n for f, (_, n) in before.items()} == {"agg": 1, "div": 1, TARGETS_FAMILY: 1}
    correct_day(path, catalog, f"agg_{PAIR}", JAN[1])
    after = versions()
    assert after["agg"] != before["agg"]
    assert after["div"] == before["div"] and after[TARGETS_FAMILY] == before[TARGETS_FAMILY]
    # The shared tables' versions: every shared table of the family, none of the pair's.
    wh = EmbeddedWarehouse(path)
    try:
        shared = family_versions(wh, catalog, None, ["tri", "csi"], TrainingWindow())
    finally:
        wh.close()
    assert {f: n for f, (_, n) in shared.items()} == {"tri": 1, "csi": 1}
