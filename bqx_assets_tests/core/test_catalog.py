"""The checked-in catalog matches production's shape; refresh, prefix rule and subsets."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bqx_assets.core.catalog import (
    IDENTIFIER,
    PAIRS,
    PROJECT_ID,
    TARGET_COLUMNS,
    Catalog,
    Column,
    SchemaRow,
    Table,
    catalog_from_schema,
)
from bqx_assets.core.errors import CatalogError
from bqx_assets_tests.conftest import mini_catalog

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


# -- safe names ------------------------------------------------------------------------------
def _file_with(tmp_path: Path, catalog: Catalog, change: Callable[[dict], None]) -> Path:
    """The catalog's file with `change` applied to its JSON data."""
    data = catalog.to_dict()
    change(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _rename_table(data: dict, old: str, new: str) -> None:
    (entry,) = [t for t in data["tables"] if t["name"] == old]
    entry["name"] = new


def test_every_name_of_the_packaged_catalog_is_a_safe_identifier(catalog: Catalog) -> None:
    names = [*catalog.pairs, catalog.features_dataset, catalog.targets_dataset]
    names += [t.name for t in [*catalog.tables.values(), *catalog.targets.values()]]
    names += [c.name for t in catalog.tables.values() for c in t.columns]
    assert all(IDENTIFIER.fullmatch(n) for n in names)
    assert len(catalog.tables) == 5_059 and len(catalog.targets) == 28
    assert PROJECT_ID.fullmatch(catalog.project)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: _rename_table(d, "agg_eurusd", "../x"), "table '../x'"),
        (lambda d: _rename_table(d, "agg_eurusd", "agg/eurusd"), "table 'agg/eurusd'"),
        (lambda d: _rename_table(d, "agg_eurusd", "agg eurusd"), "table 'agg eurusd'"),
        (lambda d: _rename_table(d, "agg_eurusd", "1agg_eurusd"), "table '1agg_eurusd'"),
        (lambda d: _rename_table(d, "agg_eurusd", "agg__eurusd"), "table 'agg__eurusd'"),
        (lambda d: _rename_table(d, "agg_eurusd", "a" * 256), f"table '{'a' * 256}'"),
        (lambda d: d.update(features_dataset="../features"), "features dataset '../features'"),
        (lambda d: d.update(targets_dataset="a.b"), "targets dataset 'a.b'"),
        (lambda d: d.update(project="../bqx"), "project '../bqx'"),
        (lambda d: d["targets"]["eurusd"].update(name="targets/eurusd"),
         "targets table 'targets/eurusd' of pair 'eurusd'"),
        (lambda d: d["schemas"][0].append(["x/y", "FLOAT64"]), "column 'x/y' of table"),
        (lambda d: d["schemas"][0].append(["_PARTITIONTIME", "INT64"]),
         "column '_PARTITIONTIME' of table"),
        (lambda d: d["schemas"][0].append([d["schemas"][0][0][0].upper(), "INT64"]),
         "the same name as column"),
        (lambda d: d["schemas"][0].append(["x", "ARRAY<INT64>"]), "type 'ARRAY<INT64>'"),
        (lambda d: d["tables"][0].update(family="a-b"), "family 'a-b' of table"),
        (lambda d: d["tables"][0].update(scope="all"), "scope 'all' of table"),
    ],
)  # fmt: skip
def test_a_catalog_file_with_an_unsafe_name_is_refused_naming_the_entry(
    tmp_path: Path, change: Callable[[dict], None], named: str
) -> None:
    catalog = mini_catalog()
    path = _file_with(tmp_path, catalog, change)
    with pytest.raises(CatalogError, match="not safe BigQuery names") as raised:
        Catalog.load(path)
    assert named in str(raised.value)
    assert str(raised.value).count(";") == 0  # one entry, one error


def test_a_pair_that_is_a_path_or_the_shared_folder_is_refused(tmp_path: Path) -> None:
    catalog = mini_catalog()

    def rename_pair(new: str) -> Callable[[dict], None]:
        def change(data: dict) -> None:
            data["pairs"] = [new if p == "gbpusd" else p for p in data["pairs"]]
            data["targets"][new] = data["targets"].pop("gbpusd")
            for table in data["tables"]:
                table["pairs"] = [new if p == "gbpusd" else p for p in table["pairs"]]

        return change

    for bad, why in (("../gbpusd", "letters, digits"), ("shared", "shared tables")):
        with pytest.raises(CatalogError, match=rf"pair '{re.escape(bad)}': .*{why}"):
            Catalog.load(_file_with(tmp_path, catalog, rename_pair(bad)))


def test_every_unsafe_name_is_named_in_one_error(tmp_path: Path) -> None:
    def change(data: dict) -> None:
        for i, table in enumerate(data["tables"][:12]):
            table["name"] = f"../t{i}"

    with pytest.raises(CatalogError) as raised:
        Catalog.load(_file_with(tmp_path, mini_catalog(), change))
    text = str(raised.value)
    assert "table '../t0'" in text and "table '../t9'" in text and "and 2 more" in text


def test_the_refresh_refuses_a_warehouse_table_with_an_unsafe_name() -> None:
    key = ("interval_time", "TIMESTAMP")
    rows = _rows("agg_eurusd_a b", [key, ("agg_mean_45", "FLOAT64")])
    rows += _rows("agg_eurusd", [key, ("agg-mean", "FLOAT64")])
    rows += _rows("targets_eurusd", [key], "t")
    with pytest.raises(CatalogError) as raised:
        catalog_from_schema(
            rows, project="p", features_dataset="f", targets_dataset="t", pairs=["eurusd"]
        )
    assert "table 'agg_eurusd_a b'" in str(raised.value)
    assert "column 'agg-mean' of table 'agg_eurusd'" in str(raised.value)
