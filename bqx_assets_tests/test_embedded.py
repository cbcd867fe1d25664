"""The embedded warehouse reproduces the catalog: minutes, weekend gaps, nulls, determinism."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bqx_assets.core.catalog import Catalog, catalog_from_schema
from bqx_assets.core.embedded import (
    EmbeddedWarehouse,
    create_warehouse,
    feature_table_data,
    targets_table_data,
    trading_minutes,
)
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.extraction import expected_schema
from bqx_assets.core.warehouse import DateRange


def test_trading_minutes_skip_the_weekend() -> None:
    keys = trading_minutes(datetime(2024, 1, 5, 21, 58, tzinfo=UTC), 4)  # a Friday
    assert [str(k) for k in keys] == [
        "2024-01-05T21:58:00.000000", "2024-01-05T21:59:00.000000",
        "2024-01-07T22:00:00.000000", "2024-01-07T22:01:00.000000",
    ]  # fmt: skip
    week = trading_minutes(datetime(2024, 1, 1, tzinfo=UTC), 10_000)
    assert np.all(np.diff(week.astype("int64")) > 0)
    assert len(week) == len(np.unique(week))


def test_tables_are_deterministic_and_independent_of_what_else_was_built(catalog: Catalog) -> None:
    spine = trading_minutes(datetime(2024, 1, 1, tzinfo=UTC), 300)
    table = catalog.table("tri_agg_bqx_eur_usd_gbp")
    assert feature_table_data(table, spine, seed=7).equals(feature_table_data(table, spine, seed=7))
    assert not feature_table_data(table, spine, seed=8).equals(feature_table_data(table, spine, 7))


def test_null_patterns(catalog: Catalog) -> None:
    spine = trading_minutes(datetime(2024, 1, 1, tzinfo=UTC), 2_000)
    corr = feature_table_data(catalog.table("corr_etf_idx_eurusd_spy"), spine, 7)
    assert corr.column("interval_time")[0].as_py() > spine[0].astype(datetime).replace(tzinfo=UTC)
    targets = targets_table_data(catalog.targets["eurusd"], spine, 7)
    h105 = targets.column("target_bqx45_h105")
    assert h105[-1].as_py() is None and h105[1_000].as_py() is not None
    assert 0 < h105.null_count / len(h105) < 0.01  # under production's 1% target threshold
    std = pc.stddev(targets.column("target_bqx45_h15")).as_py()
    assert 0.07 < std < 0.1


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


def test_append_changes_the_source_state(tmp_path: Path, mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    small = catalog.subset(["eurusd"])
    path = tmp_path / "w.duckdb"
    create_warehouse(path, small, pairs=["eurusd"], rows=50).close()
    wh = EmbeddedWarehouse(path, read_only=False)
    before = wh.state(small.features_dataset, "agg_eurusd")
    after = wh.append_minutes(small.features_dataset, "agg_eurusd", 5)
    assert after.rows == before.rows + 5 and after.last_modified > before.last_modified
    assert wh.state(small.features_dataset, "tmp_eurusd").rows == 50


def test_missing_warehouse_and_table_are_clear_errors(tmp_path: Path, mini_warehouse: Path) -> None:
    with pytest.raises(WarehouseError, match="bqx warehouse create"):
        EmbeddedWarehouse(tmp_path / "none.duckdb")
    wh = EmbeddedWarehouse(mini_warehouse)
    with pytest.raises(WarehouseError, match=r"bqx_ml_v3_features_v2\.agg_usdjpy does not exist"):
        wh.state("bqx_ml_v3_features_v2", "agg_usdjpy")
    with pytest.raises(WarehouseError, match=r"cannot read bqx_ml_v3_features_v2\.agg_usdjpy"):
        wh.read("bqx_ml_v3_features_v2", "agg_usdjpy", ["interval_time"], DateRange())
