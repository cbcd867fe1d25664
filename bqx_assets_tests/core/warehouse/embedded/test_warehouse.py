"""The embedded warehouse read as BigQuery is: its catalog, reads, per-day states, appends and
reads as of a cut."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bqx_assets.core.catalog import Catalog, catalog_from_schema
from bqx_assets.core.checkpoints.schema import expected_schema
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse import Cut, DateRange
from bqx_assets.core.warehouse.embedded import (
    REVISED_ROWS,
    EmbeddedWarehouse,
    warehouse_params,
)
from bqx_assets.core.warehouse.synthetic import (
    DEFAULT_SEED,
    DEFAULT_START,
    Series,
    targets_table_data,
)
from bqx_assets_tests.conftest import Warehouses
from bqx_assets_tests.core.warehouse.embedded.helpers import as_generated, as_stored


def test_information_schema_refreshes_to_the_same_catalog(
    mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    refreshed = catalog_from_schema(
        wh.information_schema(),
        project=catalog.project,
        features_dataset=catalog.features_dataset,
        targets_dataset=catalog.targets_dataset,
        pairs=catalog.pairs,
    )
    assert refreshed.to_dict() == catalog.to_dict()


def test_read_applies_window_order_and_types(
    mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    table = catalog.table("div_bqx_eurusd")
    start = datetime(2024, 1, 1, 2, 0, tzinfo=UTC)
    end = datetime(2024, 1, 1, 3, 0, tzinfo=UTC)
    read = wh.read(table.dataset, table.name, expected_schema(table).names, DateRange(start, end))
    assert read.data.num_rows == 60
    assert read.data.schema.field("interval_time").type == pa.timestamp("us", tz="UTC")
    assert read.data.schema.field("div_short_leading").type == pa.bool_()
    assert read.data.column(0)[0].as_py() == start
    assert read.bytes_read == 60 * (8 + 1 + 8 * 5)


def test_append_changes_the_source_state(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=50)
    wh = EmbeddedWarehouse(path, read_only=False)
    before = wh.state(small.features_dataset, "agg_eurusd")
    after = wh.append_minutes(small.features_dataset, "agg_eurusd", 5)
    assert after.rows == before.rows + 5 and after.last_modified > before.last_modified
    assert wh.state(small.features_dataset, "tmp_eurusd").rows == 50


def test_append_to_a_read_only_warehouse_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "warehouse.duckdb", small, pairs=["eurusd"], rows=50)
    wh = EmbeddedWarehouse(path)
    with pytest.raises(
        WarehouseError, match=r"cannot append: .*warehouse\.duckdb is open read-only"
    ):
        wh.append(10)
    with pytest.raises(WarehouseError, match=r"cannot append to .*agg_eurusd: .* read-only"):
        wh.append_minutes(small.features_dataset, "agg_eurusd", 10)
    assert wh.params()["rows"] == "50"
    assert wh.state(small.features_dataset, "agg_eurusd").rows == 50


def test_append_minutes_to_a_targets_table_fills_its_old_look_ahead(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=1_000)
    wh = EmbeddedWarehouse(path, read_only=False)
    targets = small.targets["eurusd"].name
    assert wh.append_minutes(small.targets_dataset, targets, 30).rows == 1_030
    expected = targets_table_data(small.targets["eurusd"], wh.series().grown(30))
    stored = as_stored(wh, small.targets_dataset, targets)
    for column in expected.schema.names:
        want = expected.column(column).cast(stored.schema.field(column).type)
        assert stored.column(column).equals(want), column


def test_per_day_partition_states(mini: tuple[Catalog, Path], mini_warehouse: Path) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    days = wh.partitions(catalog.features_dataset, "agg_eurusd")
    assert [str(d.day) for d in days] == ["2024-01-01"]  # 600 minutes from Monday 00:00
    assert sum(d.rows for d in days) == wh.state(catalog.features_dataset, "agg_eurusd").rows


def test_append_adds_the_next_minutes_everywhere_and_updates_only_their_days(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    path = warehouses.copy(
        tmp_path / "w.duckdb", catalog, pairs=["eurusd"], rows=1_500, faults=["stale:tmp_eurusd"]
    )
    before = EmbeddedWarehouse(path)
    old_states = before.states(catalog.features_dataset, ["agg_eurusd", "tmp_eurusd"])
    old_days = before.partitions(catalog.features_dataset, "agg_eurusd")
    old_rows = before.read(
        catalog.features_dataset, "agg_eurusd", ["interval_time", "agg_mean_45"], DateRange()
    ).data
    before.close()
    writer = EmbeddedWarehouse(path, read_only=False)
    added = writer.append(120)
    writer.close()
    assert added["agg_eurusd"] == 120 and added["tmp_eurusd"] == 0  # a stale source stays
    wh = EmbeddedWarehouse(path)
    assert wh.params()["rows"] == "1620"
    agg = wh.state(catalog.features_dataset, "agg_eurusd")
    assert agg.rows == 1_620 and agg.last_modified > old_states["agg_eurusd"].last_modified
    assert wh.state(catalog.features_dataset, "tmp_eurusd") == old_states["tmp_eurusd"]
    assert wh.state(catalog.targets_dataset, "targets_eurusd").rows == 1_620
    days = wh.partitions(catalog.features_dataset, "agg_eurusd")
    # 1,500 minutes from Monday 00:00 end on Tuesday at 01:00: the append adds to Tuesday only.
    assert [(str(d.day), d.rows) for d in days] == [("2024-01-01", 1440), ("2024-01-02", 180)]
    assert days[0] == old_days[0]
    assert days[-1].last_modified > old_days[-1].last_modified
    # The series continues: the old rows are unchanged, the new ones follow on.
    rows = wh.read(
        catalog.features_dataset, "agg_eurusd", ["interval_time", "agg_mean_45"], DateRange()
    ).data
    assert rows.slice(0, old_rows.num_rows).equals(old_rows)
    step = np.abs(np.diff(rows.column("agg_mean_45").to_numpy()[1_490:1_510])).max()
    assert step < 0.01
    assert warehouse_params(path)["plan_rows"] == "1500"


def test_missing_warehouse_and_table_are_clear_errors(tmp_path: Path, mini_warehouse: Path) -> None:
    with pytest.raises(WarehouseError, match="bqx warehouse create"):
        EmbeddedWarehouse(tmp_path / "none.duckdb")
    wh = EmbeddedWarehouse(mini_warehouse)
    with pytest.raises(WarehouseError, match=r"bqx_ml_v3_features_v2\.agg_usdjpy does not exist"):
        wh.state("bqx_ml_v3_features_v2", "agg_usdjpy")
    with pytest.raises(WarehouseError, match=r"cannot read bqx_ml_v3_features_v2\.agg_usdjpy"):
        wh.read("bqx_ml_v3_features_v2", "agg_usdjpy", ["interval_time"], DateRange())


def test_an_appended_warehouse_equals_one_generated_at_the_grown_length(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """Every table after create(N) + append(M) holds exactly the generator's rows at N + M
    (values and nulls): the targets' look-ahead nulls of the old tail are filled. The creation
    size stays N, as it fixes the null model (warm-ups, late starts, outages), so the reference
    is the generator at Series(plan_rows=N, rows=N + M), not a warehouse created at N + M."""
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    # 2,940 minutes from Monday 00:00 end on Wednesday at 01:00: the targets' old tail (the last
    # 105 rows) spans Tuesday's end and Wednesday; Monday is not touched.
    rows, minutes = 2_940, 300
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=rows)
    targets = small.targets["eurusd"].name
    before = EmbeddedWarehouse(path)
    old_days = {d.day: d for d in before.partitions(small.targets_dataset, targets)}
    old_tail = as_stored(before, small.targets_dataset, targets).slice(rows - REVISED_ROWS)
    before.close()
    late = "target_bqx45_h105"
    assert old_tail.column(late).null_count > 0  # look-ahead: the minutes after were unknown

    wh = EmbeddedWarehouse(path, read_only=False)
    added = wh.append(minutes)
    grown = Series(DEFAULT_START, rows, rows + minutes, DEFAULT_SEED)
    assert wh.series() == grown and added[targets] == minutes
    tables = [(small.targets_dataset, targets)]
    tables += [(t.dataset, t.name) for t in small.tables_for("eurusd")]
    for dataset, name in tables:
        stored = as_stored(wh, dataset, name)
        expected = as_generated(small, name, grown)
        assert stored.schema.names == expected.schema.names, name
        for column in expected.schema.names:
            want = expected.column(column).cast(stored.schema.field(column).type)
            assert stored.column(column).equals(want), (name, column)
        assert sum(d.rows for d in wh.partitions(dataset, name)) == stored.num_rows, name
        assert wh.state(dataset, name).rows == stored.num_rows, name
    filled = as_stored(wh, small.targets_dataset, targets).slice(rows - REVISED_ROWS, REVISED_ROWS)
    assert filled.column(late).null_count == 0
    # The days of the rewritten rows changed (a refresh re-reads them); Monday did not.
    days = {d.day: d for d in wh.partitions(small.targets_dataset, targets)}
    monday, tuesday, wednesday = sorted(old_days)
    assert days[monday] == old_days[monday]
    for day in (tuesday, wednesday):
        assert days[day].last_modified > old_days[day].last_modified
    assert [days[d].rows for d in sorted(days)] == [1440, 1440, 60 + minutes]


# -- as of a cut -----------------------------------------------------------------------------
def _everything(wh: EmbeddedWarehouse, catalog: Catalog, cut: Cut | None = None) -> dict:
    """Every table's rows (all columns, whole table) and day states, as of `cut`."""
    out = {}
    tables = [(catalog.targets_dataset, catalog.targets["eurusd"].name)]
    tables += [(t.dataset, t.name) for t in catalog.tables_for("eurusd")]
    for dataset, name in tables:
        columns = [c for c in as_stored(wh, dataset, name).schema.names]
        data = wh.read(dataset, name, columns, DateRange(), cut=cut).data
        days = wh.partition_states(dataset, [name], cut=cut)[name]
        out[name] = (data, days)
    return out


def test_reads_and_day_states_as_of_a_cut_ignore_appends_committed_after_it(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """A cut taken before two appends (one of every table, one of a single table) reads every
    table, and its day states, exactly as they were at the cut: no new minute, a new day left
    out, and the targets' look-ahead rows that the appends rewrote as they were (nulls); a cut
    after the first append sees it and not the second; no cut reads the warehouse as it is."""
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    # 2,940 minutes end on Wednesday at 01:00: the appends rewrite Tuesday's last rows and
    # add Wednesday's (a day the cut before has 60 minutes of) and no new day, then Thursday.
    path = warehouses.copy(tmp_path / "w.duckdb", small, pairs=["eurusd"], rows=2_940)
    wh = EmbeddedWarehouse(path, read_only=False)
    before, first = _everything(wh, small), wh.cut()
    wh.append(300)
    middle, second = _everything(wh, small), wh.cut()
    targets = small.targets["eurusd"].name
    wh.append_minutes(small.targets_dataset, targets, 1_500)  # into Thursday
    now = _everything(wh, small)
    assert now[targets][0].num_rows == 2_940 + 300 + 1_500
    assert len(now[targets][1]) == len(before[targets][1]) + 1
    for name, (data, days) in _everything(wh, small, first).items():
        assert data.equals(before[name][0]), name
        assert days == before[name][1], name
    for name, (data, days) in _everything(wh, small, second).items():
        assert data.equals(middle[name][0]), name
        assert days == middle[name][1], name
    assert _everything(wh, small) == now
    # A window within the rewritten rows takes only those of them in it, as they were.
    late = DateRange(datetime(2024, 1, 2, 23, tzinfo=UTC), datetime(2024, 1, 3, 0, 50, tzinfo=UTC))
    columns = ["interval_time", "target_bqx45_h105"]
    at_cut = wh.read(small.targets_dataset, targets, columns, late, cut=first).data
    whole = before[targets][0].select(columns)
    keys = whole.column("interval_time").cast(pa.int64()).to_numpy()
    lo, hi = np.searchsorted(keys, [_us(late.start), _us(late.end)])
    assert at_cut.equals(whole.slice(lo, hi - lo)) and at_cut.num_rows == 110
    assert at_cut.column(1).null_count > 0


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)
