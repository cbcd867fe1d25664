"""The preflight on the embedded warehouse and on the BigQuery emulator (through the official
client, with an answering proxy for what the emulator cannot show): clean, and each defect
named in one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.costs import Prices
from bqx_assets.core.layout import KEY
from bqx_assets.core.preflight import Preflight, preflight
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse
from bqx_assets.core.warehouse.bigquery.metadata import EXPORT, GET_DATA
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.core.warehouse.conftest import BigQueryMini, relocated
from emulators import bigquery_answers as answers
from emulators.proxy import HttpAnswerProxy

PRICE = Prices().storage_read_tib


def _usd(count: int) -> float:
    return count / 2**40 * PRICE


# -- embedded ---------------------------------------------------------------------------------
def test_the_embedded_warehouse_of_the_catalog_is_clean(
    mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog = mini[0]
    wh = EmbeddedWarehouse(mini_warehouse)
    try:
        found = preflight(wh, catalog)
        sizes = wh.states(catalog.features_dataset, list(catalog.tables))
    finally:
        wh.close()
    assert found.ok, found.defects
    assert found.tables == len(catalog.tables) + len(catalog.targets)
    features = sum(s.bytes for s in sizes.values())
    assert 0 < features < found.full_build.bytes  # the targets tables too
    assert found.full_build.usd == pytest.approx(_usd(found.full_build.bytes))
    # The 600 minutes of each table lie in one day: a refresh of the newest day reads them all
    # (the emulator's 5 days show a share).
    assert found.refresh.bytes == found.full_build.bytes
    assert set(found.pairs) == set(catalog.pairs)
    assert all(0 < r.bytes < found.full_build.bytes for r in found.pairs.values())


def test_the_embedded_warehouse_names_a_missing_and_a_retyped_table(
    mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog = mini[0]
    agg = catalog.tables["agg_eurusd"]
    first = agg.columns[0]
    retyped = dataclasses.replace(agg, columns=(dataclasses.replace(first, dtype="INT64"),
                                                *agg.columns[1:]))  # fmt: skip
    absent = dataclasses.replace(catalog.tables["tmp_eurusd"], name="tmp_eurusd_absent")
    tables = dict(catalog.tables) | {agg.name: retyped, absent.name: absent}
    edited = dataclasses.replace(catalog, tables=tables)
    wh = EmbeddedWarehouse(mini_warehouse)
    try:
        found = preflight(wh, edited)
    finally:
        wh.close()
    ds = catalog.features_dataset
    assert [str(d) for d in found.defects] == [
        f"table {ds}.agg_eurusd: column {first.name} is FLOAT64, the catalog has INT64",
        f"table {ds}.tmp_eurusd_absent: does not exist",
    ]
    assert {d.family for d in found.defects} == {"agg", "tmp"}


# -- BigQuery emulator --------------------------------------------------------------------------


@pytest.mark.emulator
def test_the_emulator_loaded_with_the_catalog_is_clean(bq_mini: BigQueryMini) -> None:
    with HttpAnswerProxy(bq_mini.emulator.rest_endpoint) as proxy:
        wh = bq_mini.warehouse(location=None, api_endpoint=proxy.endpoint)
        try:
            found = preflight(wh, _loaded(bq_mini))
        finally:
            wh.close()
    assert found.ok, found.defects
    assert found.location == "US"  # none configured: the datasets' own, which runs will use
    assert found.full_build.bytes > 0 and found.refresh.bytes < found.full_build.bytes
    # Metadata only: the jobs are the dry run and INFORMATION_SCHEMA look-ups.
    queries = [str(e.json()) for e in proxy.sent("POST", "/jobs")]
    assert any("'dryRun': True" in q for q in queries)
    assert all("'dryRun': True" in q or "INFORMATION_SCHEMA" in q for q in queries)


def _loaded(bq_mini: BigQueryMini) -> Catalog:
    """The mini catalog cut to the tables loaded into the emulator (eurusd's and its targets)."""
    catalog = bq_mini.catalog.subset(["eurusd"])
    return dataclasses.replace(
        catalog, tables={n: t for n, t in catalog.tables.items() if n in bq_mini.rows}
    )


@pytest.fixture(scope="module")
def defective(bq_mini: BigQueryMini) -> Iterator[tuple[Catalog, str, str]]:
    """Tables of a small catalog loaded into new datasets of the emulator (30 rows each), some
    of them changed: one left out, `interval_time` a DATE in one, a column retyped and another
    dropped in one."""
    from emulators.bigquery import load_tables

    emulator = bq_mini.emulator
    features, targets = emulator.dataset("pf_features"), emulator.dataset("pf_targets")
    names = ["agg_eurusd", "div_bqx_eurusd", "base_idx_eurusd", "lag_eurusd_45",
             "regime_eurusd_45", "tmp_eurusd", "corr_etf_idx_eurusd_spy"]  # fmt: skip
    base = bq_mini.catalog.subset(["eurusd"])
    catalog = relocated(
        dataclasses.replace(base, tables={n: base.tables[n] for n in names}), features, targets
    )
    rows = {n: bq_mini.rows[n].slice(0, 30) for n in [*names, "targets_eurusd"]}
    regime = rows["regime_eurusd_45"]
    rows["regime_eurusd_45"] = regime.set_column(
        0, KEY, pc.cast(regime[KEY], pa.date32())
    )  # fmt: skip
    tmp = rows["tmp_eurusd"]
    rows["tmp_eurusd"] = tmp.set_column(
        tmp.schema.get_field_index("tmp_mean_45"), "tmp_mean_45",
        pc.cast(pc.round(tmp["tmp_mean_45"]), pa.int64()),
    ).drop_columns(["tmp_mean_90"])  # fmt: skip
    client = emulator.client()
    load_tables(client, features, {n: t for n, t in rows.items() if n not in
                                   ("div_bqx_eurusd", "targets_eurusd")})  # fmt: skip
    load_tables(client, targets, {"targets_eurusd": rows["targets_eurusd"]})
    yield catalog, features, targets


@pytest.mark.emulator
def test_each_defect_of_the_emulator_is_named_in_one_line(
    bq_mini: BigQueryMini, defective: tuple[Catalog, str, str]
) -> None:
    catalog, features, targets = defective
    rules = [
        # Where the datasets are: the emulator's own answer follows the jobs run in it.
        answers.dataset_location(targets, "US"),
        answers.dataset_location(features, "EU"),
        answers.view(features, "base_idx_eurusd"),
        answers.partitioned_by(features, "lag_eurusd_45", "HOUR", KEY),
        answers.streaming_buffer(features, "corr_etf_idx_eurusd_spy", 1200),
    ]
    withhold = answers.permissions_withheld(targets, [GET_DATA])
    with HttpAnswerProxy(bq_mini.emulator.rest_endpoint, before=[withhold], after=rules) as proxy:
        wh = BigQueryWarehouse(
            bq_mini.emulator.project, features, targets, location="US",
            api_endpoint=proxy.endpoint, read_endpoint=bq_mini.emulator.grpc_endpoint,
        )  # fmt: skip
        try:
            found = preflight(wh, catalog)
        finally:
            wh.close()
    f = features
    assert [str(d) for d in found.defects] == [
        f"dataset {f}: is in EU, not in the configured location US: jobs sent to US would not "
        "find its tables",
        f"table {f}.div_bqx_eurusd: does not exist",
        f"table {f}.base_idx_eurusd: is a VIEW, not a TABLE",
        f"table {f}.base_idx_eurusd: is not partitioned; a refresh needs it partitioned by DAY "
        "on interval_time",
        f"table {f}.lag_eurusd_45: is partitioned by HOUR on interval_time, not by DAY on "
        "interval_time",
        f"table {f}.regime_eurusd_45: column interval_time is DATE, not TIMESTAMP",
        f"table {f}.tmp_eurusd: column tmp_mean_45 is INT64, the catalog has FLOAT64",
        f"table {f}.tmp_eurusd: column tmp_mean_90 is missing (the catalog has FLOAT64)",
        f"table {f}.corr_etf_idx_eurusd_spy: has about 1,200 rows in the streaming buffer, in no "
        "day partition yet: a run now would leave them out",
        f"credentials: cannot create read sessions ({targets}.targets_eurusd): no {GET_DATA} on "
        f"{targets}.targets_eurusd",
    ]
    assert not found.ok
    # Only agg_eurusd and the targets table are clean: the refresh's estimate counts them only.
    assert 0 < found.refresh.bytes < found.full_build.bytes
    assert EXPORT not in " ".join(str(d) for d in found.defects)
    assert proxy.sent("POST", ":testIamPermissions")


def test_a_report_prints_one_line_per_defect_then_the_reads() -> None:
    from bqx_assets.core.preflight import Defect, Reads

    report = Preflight(
        "bigquery", "us-central1", 3, (Defect("table f.t", "does not exist", "agg"),),
        Reads(2**40, PRICE), Reads(2**30, PRICE / 1024),
    )  # fmt: skip
    assert report.lines() == [
        "table f.t: does not exist",
        "3 tables on bigquery (us-central1): 1 defects",
        f"full build: reads 1,024.00 GiB, ${PRICE:,.2f} at list price",
        f"refresh of one new day: reads 1.00 GiB, ${PRICE / 1024:,.2f} at list price",
    ]
    assert report.to_dict()["ok"] is False
