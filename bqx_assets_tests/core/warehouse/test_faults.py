"""Each fault is written into the warehouse exactly as its record says (what the gate must find)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from bqx_assets.core.warehouse.faults import FAULT_KINDS, Fault, FaultError, FaultSpec
from bqx_assets.core.warehouse.synthetic import Series, merged_null_counts
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses

ROWS = 600  # as the clean mini warehouse, built with the same seed
FAULTS = [
    "ragged=2:tri_agg_bqx_eur_usd_gbp+mkt_sentiment+var_agg_bqx_usd",
    "stale=3:csi_agg_eur+lag_eurusd_45",
    "dupkeys=5:regime_eurusd_45",
    "unit:corr_etf_idx_gbpusd_spy",
    "allnull:div",
    "leak:agg_gbpusd",
    "dropcol:tmp_eurusd",
    "retype=base_mean_90:base_idx_eurusd",
    "nulls:cov",
]


@pytest.fixture(scope="module")
def faulty(warehouses: Warehouses, mini: tuple[Catalog, Path]) -> Path:
    """The mini warehouse with every kind of fault (read-only, shared)."""
    return warehouses.path(mini[0], pairs=MINI_PAIRS, rows=ROWS, faults=FAULTS)


@pytest.fixture(scope="module")
def records(faulty: Path) -> dict[str, Fault]:
    wh = EmbeddedWarehouse(faulty)
    try:
        return {f.kind: f for f in wh.faults()}
    finally:
        wh.close()


def _read(path: Path, table: str, dataset: str = "bqx_ml_v3_features_v2") -> pa.Table:
    wh = EmbeddedWarehouse(path)
    try:
        return wh._cursor().execute(f'SELECT * FROM "{dataset}"."{table}"').to_arrow_table()
    finally:
        wh.close()


def _spine() -> np.ndarray:
    return Series(plan_rows=ROWS, rows=ROWS).spine()


def test_every_kind_is_recorded_in_request_order(records: dict[str, Fault]) -> None:
    assert list(records) == [s.split(":")[0].split("=")[0] for s in FAULTS]
    assert set(records) == set(FAULT_KINDS)
    assert records["allnull"].tables == ("div_bqx_eurusd", "div_bqx_gbpusd")  # a family
    assert records["nulls"].tables == (
        "cov_agg_eurusd_gbpusd", "cov_lag_eurgbp_eurusd", "cov_regime_gbpjpy_gbpusd",
    )  # fmt: skip


def test_ragged_tail_each_table_at_its_own_limit(
    records: dict[str, Fault], faulty: Path, mini_warehouse: Path
) -> None:
    fault = records["ragged"]
    end = _spine()[-1]
    for table, kept in zip(fault.tables, fault.counts, strict=True):
        data, clean = _read(faulty, table), _read(mini_warehouse, table)
        assert data.num_rows == kept and data.equals(clean.slice(0, kept))
        last = data.column("interval_time")[-1].as_py()
        assert last < end.astype(datetime).replace(tzinfo=UTC)
        cut = np.count_nonzero(_us(_spine()) > _keys(data)[-1])  # spine minutes after its end
        assert 1 <= cut <= 12  # up to 2 % of 600


def test_stale_sources_stop_the_share_before_the_end(
    records: dict[str, Fault], faulty: Path, mini_warehouse: Path
) -> None:
    fault = records["stale"]
    assert fault.value == "3" and fault.tables == ("lag_eurusd_45", "csi_agg_eur")
    cutoff = _us(_spine())[ROWS - 18]  # 3 % of 600 minutes
    for table, kept in zip(fault.tables, fault.counts, strict=True):
        data, clean = _read(faulty, table), _read(mini_warehouse, table)
        assert data.num_rows == kept == np.count_nonzero(_keys(clean) < cutoff)
        assert _keys(data).max() < cutoff and data.equals(clean.slice(0, kept))


def test_duplicate_timestamps(records: dict[str, Fault], faulty: Path) -> None:
    fault = records["dupkeys"]
    data = _read(faulty, "regime_eurusd_45")
    keys = _keys(data)
    assert fault.counts == (5,) and len(keys) - len(np.unique(keys)) == 5
    assert np.all(np.diff(keys) >= 0)


def test_keys_in_the_wrong_unit_are_1970_dates(
    records: dict[str, Fault], faulty: Path, mini_warehouse: Path
) -> None:
    fault = records["unit"]
    data, clean = _read(faulty, fault.tables[0]), _read(mini_warehouse, fault.tables[0])
    assert fault.counts == (clean.num_rows,)
    assert np.array_equal(_keys(data), _keys(clean) // 1000)
    assert data.column("interval_time")[-1].as_py().year == 1970


def test_a_whole_family_all_null(records: dict[str, Fault], faulty: Path) -> None:
    for table, rows in zip(records["allnull"].tables, records["allnull"].counts, strict=True):
        data = _read(faulty, table)
        assert data.num_rows == rows
        for name in data.schema.names:
            if name not in ("interval_time", "pair"):
                assert data.column(name).null_count == rows, (table, name)


def test_leaked_target_under_an_innocent_name(records: dict[str, Fault], faulty: Path) -> None:
    fault = records["leak"]
    assert (fault.column, fault.value) == ("agg_mean_45", "targets_gbpusd.target_bqx45_h15")
    feature = _read(faulty, "agg_gbpusd")
    targets = _read(faulty, "targets_gbpusd", "bqx_ml_v3_analytics_v2")
    assert feature.column("interval_time").equals(targets.column("interval_time"))
    assert feature.column("agg_mean_45").equals(targets.column("target_bqx45_h15"))


def test_schema_drift(
    records: dict[str, Fault], faulty: Path, mini_warehouse: Path, mini: tuple[Catalog, Path]
) -> None:
    catalog, _ = mini
    floats = [c.name for c in catalog.table("tmp_eurusd").columns if c.dtype == "FLOAT64"]
    schema = {(r.table, r.column): r.dtype for r in EmbeddedWarehouse(faulty).information_schema()}
    dropped, retyped = records["dropcol"], records["retype"]
    assert dropped.column == floats[-1]  # the table's last FLOAT64 column by default
    assert ("tmp_eurusd", floats[-1]) not in schema
    assert ("tmp_eurusd", floats[0]) in schema
    assert (retyped.column, retyped.value) == ("base_mean_90", "STRING")
    assert schema[("base_idx_eurusd", "base_mean_90")] == "STRING"
    clean = _read(mini_warehouse, "base_idx_eurusd").column("base_mean_90")
    assert (
        _read(faulty, "base_idx_eurusd").column("base_mean_90").equals(pc.cast(clean, pa.string()))
    )


def test_null_share_doubled_as_the_training_file_sees_it(
    records: dict[str, Fault], faulty: Path, mini: tuple[Catalog, Path]
) -> None:
    catalog, _ = mini
    fault = records["nulls"]
    spine = _us(_spine())
    for table, after in zip(fault.tables, fault.counts, strict=True):
        data = _read(faulty, table)
        held = data.filter(pa.array(np.isin(_keys(data), spine)))
        columns = [c.name for c in catalog.table(table).columns]
        nulls = sum(ROWS - held.num_rows + held.column(c).null_count for c in columns)
        clean = sum(
            merged_null_counts(catalog.table(table), Series(plan_rows=ROWS, rows=ROWS)).values()
        )
        assert nulls == after == 2 * clean, table


def test_other_tables_are_untouched(faulty: Path, mini_warehouse: Path) -> None:
    for table in ("agg_eurusd", "tmp_gbpusd", "targets_eurusd"):
        dataset = "bqx_ml_v3_analytics_v2" if table.startswith("targets_") else None
        args = (dataset,) if dataset else ()
        assert _read(faulty, table, *args).equals(_read(mini_warehouse, table, *args))


def test_bad_requests_are_clear_errors_and_lose_nothing(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    catalog, _ = mini
    with pytest.raises(FaultError, match="unknown kind 'late'"):
        FaultSpec.parse("late:agg_eurusd")
    with pytest.raises(FaultError, match="expected KIND"):
        FaultSpec.parse("stale")
    path = warehouses.copy(tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=ROWS)
    with pytest.raises(FaultError, match="'agg_usdjpy' is neither a feature table nor a family"):
        create_warehouse(path, catalog, pairs=["eurusd"], rows=50, faults=["stale:agg_usdjpy"])
    with pytest.raises(FaultError, match="table tmp_eurusd has no column 'nope'"):
        create_warehouse(path, catalog, pairs=["eurusd"], rows=50, faults=["dropcol=nope:tmp"])
    assert EmbeddedWarehouse(path).params()["rows"] == str(ROWS)  # the old warehouse is intact
    assert not path.with_name(path.name + ".tmp").exists()


def _keys(data: pa.Table) -> np.ndarray:
    return data.column("interval_time").cast(pa.int64()).to_numpy()


def _us(keys: np.ndarray) -> np.ndarray:
    return keys.astype("datetime64[us]").astype(np.int64)
