"""The synthetic data has production's shape: null shares per family at any size, smooth series,
null patterns where real data has them, determinism, and series that continue when appended."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bqx_assets.core.catalog import Catalog, Table
from bqx_assets.core.warehouse.synthetic import (
    ETF_CLOSE,
    ETF_OPEN,
    Series,
    feature_table_data,
    merged_null_counts,
    table_positions,
    targets_table_data,
    trading_minutes,
)

# DOMAIN: null shares of the merged training file, and the tolerance the warehouse must meet.
PRODUCTION_SHARES = {"corr": 0.53, "tri": 0.24, "cov": 0.10}
PRODUCTION_OVERALL = 0.124
FAMILY_TOLERANCE, OVERALL_TOLERANCE = 0.05, 0.02


def _spine_nulls(table: Table, data: pa.Table, spine: np.ndarray) -> dict[str, int]:
    """Null cells per column once the table is left-joined onto the spine, from the data."""
    keys = data.column("interval_time").cast(pa.int64()).to_numpy()
    on_spine = pa.array(np.isin(keys, spine.astype("datetime64[us]").astype(np.int64)))
    held = data.filter(on_spine)
    return {
        c.name: len(spine) - held.num_rows + held.column(c.name).null_count for c in table.columns
    }


def _shares(catalog: Catalog, counts_of) -> tuple[float, dict[str, float]]:
    nulls: dict[str, int] = {}
    cells: dict[str, int] = {}
    for table in catalog.tables_for("eurusd"):
        counts, rows = counts_of(table)
        features = [c.name for c in table.columns if c.role == "feature"]
        nulls[table.family] = nulls.get(table.family, 0) + sum(counts[c] for c in features)
        cells[table.family] = cells.get(table.family, 0) + rows * len(features)
    overall = sum(nulls.values()) / sum(cells.values())
    return overall, {f: nulls[f] / cells[f] for f in nulls}


def _assert_production_shares(overall: float, shares: dict[str, float]) -> None:
    assert abs(overall - PRODUCTION_OVERALL) <= OVERALL_TOLERANCE, overall
    for family, expected in PRODUCTION_SHARES.items():
        assert abs(shares[family] - expected) <= FAMILY_TOLERANCE, (family, shares[family])
    others = [s for f, s in shares.items() if f not in PRODUCTION_SHARES]
    assert max(others) < 0.05  # warm-ups only


def test_null_shares_of_the_demo_size_data_match_production(catalog: Catalog) -> None:
    series = Series(plan_rows=5_000, rows=5_000)
    spine = series.spine()

    def from_data(table: Table) -> tuple[dict[str, int], int]:
        return _spine_nulls(table, feature_table_data(table, series), spine), len(spine)

    _assert_production_shares(*_shares(catalog, from_data))


@pytest.mark.parametrize("rows", [44_437, 177_748])
def test_null_shares_at_production_size_match_production(catalog: Catalog, rows: int) -> None:
    # The null model (checked against the data below) at sizes too slow to generate in a test.
    series = Series(plan_rows=rows, rows=rows)
    _assert_production_shares(*_shares(catalog, lambda t: (merged_null_counts(t, series), rows)))


def test_the_null_model_is_what_the_data_holds(catalog: Catalog) -> None:
    series = Series(plan_rows=3_000, rows=3_000)
    spine = series.spine()
    for table in catalog.tables_for("eurusd")[::9]:
        data = feature_table_data(table, series)
        assert _spine_nulls(table, data, spine) == merged_null_counts(table, series), table.name


def test_nulls_come_from_where_real_data_gets_them(catalog: Catalog) -> None:
    series = Series(plan_rows=20_000, rows=20_000)
    spine = series.spine()
    # ETF correlations: rows only while the ETF quotes, on weekdays.
    corr = feature_table_data(catalog.table("corr_etf_idx_eurusd_spy"), series)
    minutes = corr.column("interval_time").cast(pa.int64()).to_numpy() // 60_000_000
    assert np.all((minutes % 1440 >= ETF_OPEN) & (minutes % 1440 < ETF_CLOSE))
    assert np.all((minutes // 1440 - 4) % 7 < 5)
    # Rolling windows warm up in proportion to their window.
    agg = feature_table_data(catalog.table("agg_eurusd"), series)
    heads = [agg.column(f"agg_mean_{w}").null_count for w in (45, 360, 2880)]
    assert 0 < heads[0] < heads[1] < heads[2] and heads[2] == pytest.approx(heads[0] * 64, rel=0.05)
    assert agg.column("agg_mean_2880").slice(heads[2]).null_count == 0
    # tri sources start late, each at its own time.
    firsts = {
        int(table_positions(catalog.table(name), series, spine)[0])
        for name in (
            "tri_agg_bqx_eur_usd_gbp",
            "tri_agg_idx_eur_usd_gbp",
            "tri_mom_bqx_eur_usd_jpy",
        )
    }
    assert len(firsts) == 3 and min(firsts) > 0.04 * series.rows
    # cov tables have no rows where either pair's cross-pair feed has an outage: a pair's outages
    # show in each of its cov tables.
    missing = {
        name: set(range(series.rows)) - set(table_positions(catalog.table(name), series, spine))
        for name in ("cov_agg_eurusd_gbpusd", "cov_agg_eurgbp_gbpusd", "cov_agg_eurgbp_eurusd")
    }
    assert all(0 < len(m) < 0.15 * series.rows for m in missing.values())
    assert missing["cov_agg_eurgbp_gbpusd"] & missing["cov_agg_eurgbp_eurusd"]  # eurgbp's
    assert missing["cov_agg_eurusd_gbpusd"] & missing["cov_agg_eurgbp_eurusd"]  # eurusd's


def test_targets_are_centred_smooth_and_null_only_at_the_ends(catalog: Catalog) -> None:
    series = Series(plan_rows=5_000, rows=5_000)
    targets = targets_table_data(catalog.targets["eurusd"], series)
    for name in ("target_bqx45_h15", "target_bqx2880_h105"):
        column = targets.column(name)
        assert abs(pc.mean(column).as_py()) < 0.05
        assert 0.06 < pc.stddev(column).as_py() < 0.12
        assert 0 < column.null_count / len(column) < 0.01  # under the gate's 1 % for targets
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        first, last = np.flatnonzero(valid)[[0, -1]]
        assert valid[first : last + 1].all()  # nulls only before and after
    h15 = targets.column("target_bqx45_h15").null_count
    assert h15 < targets.column("target_bqx45_h105").null_count  # longer horizon, longer tail


def test_values_are_smooth_rounded_series(catalog: Catalog) -> None:
    series = Series(plan_rows=5_000, rows=5_000)
    data = feature_table_data(catalog.table("reg_eurusd"), series)
    for column in catalog.table("reg_eurusd").columns[:40]:
        values = data.column(column.name).drop_null().to_numpy()
        if column.dtype == "FLOAT64":
            assert np.corrcoef(values[:-1], values[1:])[0, 1] > 0.9, column.name
            scale = 10.0 ** np.floor(np.log10(np.abs(values).max()))
            digits = values / scale * 1e5  # five or six significant digits
            assert np.allclose(digits, np.round(digits), atol=1e-6), column.name
        elif column.dtype == "INT64":
            assert np.abs(np.diff(values)).mean() <= 1.0, column.name
    tri = feature_table_data(catalog.table("tri_agg_bqx_eur_usd_gbp"), series)
    assert pc.unique(tri.column("currency2")).to_pylist() == ["usd"]
    assert tri.schema.field("tri_std_360").type == pa.int64()


def test_data_are_deterministic_per_seed_and_table(catalog: Catalog) -> None:
    table = catalog.table("tri_agg_bqx_eur_usd_gbp")
    series = Series(plan_rows=500, rows=500)
    assert feature_table_data(table, series).equals(feature_table_data(table, series))
    other = Series(plan_rows=500, rows=500, seed=8)
    assert not feature_table_data(table, other).equals(feature_table_data(table, series))
    # A shared table is the same whichever pairs' catalog it comes from.
    alone = Catalog.load().subset(["gbpjpy"]).table(table.name)
    assert feature_table_data(alone, series).equals(feature_table_data(table, series))


def test_a_grown_series_continues_the_same_rows(catalog: Catalog) -> None:
    series = Series(plan_rows=2_000, rows=2_000)
    for name in ("agg_eurusd", "corr_etf_idx_eurusd_spy", "cov_agg_eurusd_gbpusd", "csi_agg_eur"):
        before = feature_table_data(catalog.table(name), series)
        after = feature_table_data(catalog.table(name), series.grown(300))
        assert after.num_rows > before.num_rows
        assert after.slice(0, before.num_rows).equals(before), name
    before = targets_table_data(catalog.targets["eurusd"], series)
    after = targets_table_data(catalog.targets["eurusd"], series.grown(300))
    assert after.num_rows == 2_300
    head = after.slice(0, 1_900)  # the old look-ahead tail has been filled since
    assert head.equals(before.slice(0, 1_900))


def test_trading_minutes_skip_the_weekend() -> None:
    from datetime import UTC, datetime

    keys = trading_minutes(datetime(2024, 1, 5, 21, 58, tzinfo=UTC), 4)  # a Friday
    assert [str(k) for k in keys] == [
        "2024-01-05T21:58:00.000000", "2024-01-05T21:59:00.000000",
        "2024-01-07T22:00:00.000000", "2024-01-07T22:01:00.000000",
    ]  # fmt: skip
    week = trading_minutes(datetime(2024, 1, 1, tzinfo=UTC), 10_000)
    assert np.all(np.diff(week.astype("int64")) > 0)
    assert len(week) == len(np.unique(week))
