"""The checked-in catalog matches production's shape; refresh, prefix rule and subsets."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from bqx_assets.core.catalog import (
    PAIRS,
    TARGET_COLUMNS,
    Catalog,
    Column,
    SchemaRow,
    Table,
    catalog_from_schema,
)
from bqx_assets.core.errors import CatalogError

FAMILY_COLUMNS = {
    "tri": 6460, "csi": 5232, "cov": 2364, "var": 973, "reg": 696, "corr": 240, "agg": 192,
    "mkt": 150, "mom": 129, "align": 126, "vol": 93, "lag": 84, "regime": 64, "der": 45,
    "mrt": 30, "rev": 30, "tmp": 23, "base": 19, "div": 18, "ext": 16, "cyc": 4,
}  # fmt: skip


def test_production_shape_for_every_pair(catalog: Catalog) -> None:
    assert catalog.pairs == PAIRS and len(PAIRS) == 28
    shared = set(catalog.shared_tables())
    assert len(shared) == 411
    for pair in catalog.pairs:
        tables = catalog.tables_for(pair)
        assert len(tables) == 667, pair
        columns = Counter()
        for t in tables:
            columns[t.family] += len(t.columns)
        assert dict(columns) == FAMILY_COLUMNS, pair
        assert sum(columns.values()) == 16_988
        scopes = Counter(t.scope for t in tables)
        assert scopes == {"shared": 411, "cov": 180, "pair": 44, "corr": 32}, pair
        # The shared tables are the very same objects for every pair.
        assert {id(t) for t in tables if t.scope == "shared"} == {id(t) for t in shared}
        assert catalog.targets[pair].targets == TARGET_COLUMNS and len(TARGET_COLUMNS) == 49


def test_cov_tables_pair_each_pair_with_its_12_partners(catalog: Catalog) -> None:
    cov = [t for t in catalog.tables_for("eurusd") if t.family == "cov"]
    partners = {p for t in cov for p in t.pairs} - {"eurusd"}
    assert len(partners) == 12
    assert all(set(p[:3] + p[3:]) & {"e", "u"} for p in partners)
    assert all(len(t.pairs) == 2 and t.owner == "shared" for t in cov)


def test_summary_tables_are_left_out_with_a_reason(catalog: Catalog) -> None:
    assert set(catalog.excluded) == {"mkt_reg_summary", "mkt_reg_bqx_summary"}
    assert all(name not in catalog.tables for name in catalog.excluded)


def test_training_columns_and_prefix_rule(catalog: Catalog) -> None:
    columns = catalog.training_columns("eurusd")
    assert columns[0] == "interval_time"
    assert columns[1:50] == TARGET_COLUMNS
    features = catalog.feature_columns("eurusd")
    assert len(columns) == 1 + 49 + len(features) == 1 + 49 + 16_988 - 7
    assert len(set(columns)) == len(columns)
    names = {f.name for f in features}
    assert "agg_bqx__agg_mean_45" in names  # agg_bqx_eurusd.agg_mean_45
    assert "cov_agg_audusd__cov_mean_45" in names  # cov_agg_audusd_eurusd, pair token removed
    # Reversible: every feature name gives back its table and column.
    for f in features[::97]:
        assert catalog.source_of("eurusd", f.name) == (f.table.name, f.column.name)


def test_leaked_target_columns_are_kept_out_of_features(catalog: Catalog) -> None:
    leaks = catalog.leak_columns("eurusd")
    assert [f.name for f in leaks] == [
        f"base_bqx__target_{w}" for w in (45, 90, 180, 360, 720, 1440, 2880)
    ]
    assert not any(f.column.name.startswith("target_") for f in catalog.feature_columns("eurusd"))


def test_a_name_collision_after_prefixing_names_both_sources() -> None:
    cols = (Column("x_mean_45", "FLOAT64"),)
    tables = {
        "agg_eurusd": Table("agg_eurusd", "ds", "agg", "pair", ("eurusd",), cols),
        "agg_eurusd_x": Table("agg", "ds", "agg", "shared", ("eurusd",), cols),
    }
    from bqx_assets.core.catalog import TargetsTable

    cat = Catalog(
        "p",
        "ds",
        "t",
        ("eurusd",),
        tables,
        {"eurusd": TargetsTable("targets_eurusd", "t", "eurusd", ())},
    )
    with pytest.raises(
        CatalogError, match=r"agg__x_mean_45.*agg_eurusd\.x_mean_45.*agg\.x_mean_45"
    ):
        cat.feature_columns("eurusd")


def test_unknown_pair_is_a_clear_error(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown pair 'eurxyz'"):
        catalog.tables_for("eurxyz")


def test_dump_is_deterministic_and_round_trips(catalog: Catalog, tmp_path: Path) -> None:
    packaged = Path(__import__("bqx_assets.core.catalog").core.catalog.__file__).with_name(
        "catalog.json"
    )
    out = catalog.dump(tmp_path / "c.json")
    assert out.read_bytes() == packaged.read_bytes()
    assert Catalog.load(out).to_dict() == catalog.to_dict()


def test_malformed_catalog_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match=r"bad\.json is unreadable"):
        Catalog.load(bad)
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog.load(tmp_path / "missing.json")


def _rows(table: str, columns: list[tuple[str, str]], dataset: str = "f") -> list[SchemaRow]:
    return [SchemaRow(dataset, table, c, i + 1, d) for i, (c, d) in enumerate(columns)]


def test_refresh_from_information_schema(caplog: pytest.LogCaptureFixture) -> None:
    key = ("interval_time", "TIMESTAMP")
    rows = (
        _rows("agg_eurusd", [key, ("agg_mean_45", "FLOAT64"), ("pair", "STRING")])
        + _rows("cov_agg_eurusd_gbpusd", [key, ("cov_mean_45", "FLOAT64")])
        + _rows("tri_agg_bqx_eur_usd_gbp", [key, ("tri_mean_45", "FLOAT64")])
        + _rows("mkt_reg_summary", [("mkt_share", "FLOAT64")])
        + _rows("var_nokey", [("var_x", "FLOAT64")])
        + _rows("other_table", [key, ("x", "FLOAT64")])
        + _rows("targets_eurusd", [key, ("pair", "STRING"), ("target_bqx45_h15", "FLOAT64")], "t")
    )
    with caplog.at_level(logging.INFO):
        cat = catalog_from_schema(
            rows, project="p", features_dataset="f", targets_dataset="t", pairs=["eurusd"]
        )
    assert [t.name for t in cat.tables_for("eurusd")] == [
        "agg_eurusd", "cov_agg_eurusd_gbpusd", "tri_agg_bqx_eur_usd_gbp",
    ]  # fmt: skip
    assert cat.table("agg_eurusd").columns == (Column("agg_mean_45", "FLOAT64"),)  # no key, no pair
    assert cat.table("cov_agg_eurusd_gbpusd").scope == "cov"
    assert cat.excluded == {
        "mkt_reg_summary": "summary table (not a per-minute feature table)",
        "var_nokey": "no interval_time column",
        "other_table": "used by no pair (no pair in its name and no shared prefix)",
    }
    assert "leaving out f.var_nokey: no interval_time column" in caplog.text


def test_refresh_rejects_unsupported_types() -> None:
    rows = _rows("agg_eurusd", [("interval_time", "TIMESTAMP"), ("a", "ARRAY<INT64>")])
    rows += _rows("targets_eurusd", [("interval_time", "TIMESTAMP")], "t")
    with pytest.raises(CatalogError, match=r"f\.agg_eurusd\.a has unsupported type ARRAY<INT64>"):
        catalog_from_schema(
            rows, project="p", features_dataset="f", targets_dataset="t", pairs=["eurusd"]
        )


def test_subset_keeps_scopes_and_owners(catalog: Catalog) -> None:
    sub = catalog.subset(["eurusd", "gbpusd"])
    assert sub.table("cov_agg_eurgbp_eurusd").pairs == ("eurusd",)
    assert sub.table("cov_agg_eurgbp_eurusd").owner == "shared"
    assert sub.table("cov_agg_eurusd_gbpusd").pairs == ("eurusd", "gbpusd")
    assert len(sub.tables_for("eurusd")) == 667
