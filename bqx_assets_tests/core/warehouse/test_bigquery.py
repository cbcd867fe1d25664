"""BigQueryWarehouse against the local-bigquery emulator: schema, reads, states, day partitions,
exports, retries and errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import catalog_from_schema
from bqx_assets.core.checkpoints.schema import expected_schema
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY, KEY_TYPE, PAIR_COLUMN
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse, RetrySettings
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS
from bqx_assets_tests.core.warehouse.conftest import SUMMARY_TABLE, BigQueryMini
from emulators.bigquery import BigQueryEmulator, load_tables
from emulators.proxy import HttpFaultProxy, TcpFaultProxy

WINDOW = DateRange(
    datetime(2024, 1, 26, 21, 0, tzinfo=UTC), datetime(2024, 1, 28, 23, 0, tzinfo=UTC)
)
"""Friday 21:00 to Sunday 23:00: the last hour before the weekend and the first after it."""
STAGING = "gs://bqx-ml-staging/exports"


def _staged(bq_mini: BigQueryMini) -> list[Path]:
    root = bq_mini.emulator.gcs_path(STAGING)
    return sorted(root.rglob("*.parquet")) if root.exists() else []


# -- schema --------------------------------------------------------------------------------------
@pytest.mark.emulator
def test_information_schema_refreshes_the_catalog(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    refreshed = catalog_from_schema(
        bq_warehouse.information_schema(),
        project=bq_mini.emulator.project,
        features_dataset=bq_mini.features,
        targets_dataset=bq_mini.targets,
        pairs=MINI_PAIRS,
    )
    loaded = [t.name for t in bq_mini.catalog.tables_for("eurusd")]
    assert sorted(refreshed.tables) == sorted(loaded)
    assert SUMMARY_TABLE in refreshed.excluded
    for name in loaded:
        assert refreshed.tables[name] == bq_mini.catalog.tables[name], name
    assert refreshed.tables["cov_agg_eurusd_gbpusd"].pairs == ("eurusd", "gbpusd")
    assert refreshed.targets == bq_mini.catalog.targets


@pytest.mark.emulator
def test_information_schema_falls_back_to_the_tables_api(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    """Where the INFORMATION_SCHEMA query is refused (400 invalidQuery), the same rows come from
    listing the tables and their schemas."""
    with HttpFaultProxy(
        bq_mini.emulator.rest_endpoint,
        faults=2,
        status=400,
        reason="invalidQuery",
        path_contains="/queries",
    ) as rest:
        wh = bq_mini.warehouse(api_endpoint=rest.endpoint)
        listed = wh.information_schema()
        assert rest.faults_injected == 2
        wh.close()
    assert sorted(listed, key=str) == sorted(bq_warehouse.information_schema(), key=str)


# -- reads ---------------------------------------------------------------------------------------
@pytest.mark.emulator
def test_read_returns_the_window_sorted_without_pair(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    for source in bq_mini.sources():
        wanted = expected_schema(source).names
        result = bq_warehouse.read(source.dataset, source.name, wanted, WINDOW)
        data = result.data
        assert data.schema.field(KEY).type == pa.timestamp("us", tz="UTC")
        assert data.column_names == wanted, source.name
        assert PAIR_COLUMN not in data.column_names
        assert data.equals(bq_mini.expected(source.name, wanted, WINDOW)), source.name
        assert result.bytes_read > 0 or data.num_rows == 0
    targets = bq_warehouse.read(bq_mini.targets, "targets_eurusd", [KEY], WINDOW).data
    assert targets.num_rows == 120  # Friday 21:00-22:00 and Sunday 22:00-23:00


@pytest.mark.emulator
def test_read_keeps_the_requested_column_order_and_pair_when_asked(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    name = "div_bqx_eurusd"
    columns = [c.name for c in bq_mini.catalog.table(name).columns]
    wanted = [KEY, columns[-1], PAIR_COLUMN, columns[0]]
    data = bq_warehouse.read(bq_mini.features, name, wanted, WINDOW).data
    assert data.equals(bq_mini.expected(name, wanted, WINDOW))
    assert data.column(PAIR_COLUMN).unique().to_pylist() == ["eurusd"]
    whole = bq_warehouse.read(bq_mini.features, name, [KEY, columns[0]], DateRange()).data
    assert whole.equals(bq_mini.rows[name].select([KEY, columns[0]]))


@pytest.mark.emulator
def test_naive_window_bounds_are_utc(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    naive = DateRange(WINDOW.start.replace(tzinfo=None), WINDOW.end.replace(tzinfo=None))  # type: ignore[union-attr]
    wanted = [KEY, bq_mini.catalog.table("csi_agg_eur").columns[0].name]
    data = bq_warehouse.read(bq_mini.features, "csi_agg_eur", wanted, naive).data
    assert data.num_rows == 120
    assert data.equals(bq_mini.expected("csi_agg_eur", wanted, WINDOW))


@pytest.mark.emulator
def test_missing_table_fails_at_once_naming_it(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    with pytest.raises(WarehouseError, match=rf"{bq_mini.features}\.agg_gbpusd"):
        bq_warehouse.read(bq_mini.features, "agg_gbpusd", [KEY, "agg_mean_45"], WINDOW)
    with pytest.raises(WarehouseError, match=rf"{bq_mini.features}\.agg_gbpusd"):
        bq_warehouse.state(bq_mini.features, "agg_gbpusd")
    assert bq_warehouse.retries == 0


@pytest.mark.emulator
def test_missing_column_fails_naming_it(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    with pytest.raises(WarehouseError, match=r"mkt_sentiment: no column\(s\) no_such_column"):
        bq_warehouse.read(bq_mini.features, "mkt_sentiment", [KEY, "no_such_column"], WINDOW)


def _minute_keys(n: int) -> np.ndarray:
    return np.datetime64("2023-01-02T00:00", "us") + np.arange(n) * 60_000_000


def _loaded(
    emulator: BigQueryEmulator, name: str, columns: dict[str, pa.Array]
) -> tuple[str, pa.Table]:
    data = pa.table(columns)
    dataset = emulator.dataset(name)
    load_tables(emulator.client(), dataset, {name: data})
    return dataset, data


@pytest.fixture(scope="module")
def big_table(bigquery_emulator: BigQueryEmulator) -> tuple[str, pa.Table]:
    """250,000 rows loaded newest first: the emulator cuts a read stream per 100,000 rows."""
    n = 250_000
    return _loaded(
        bigquery_emulator,
        "big",
        {
            KEY: pa.array(_minute_keys(n)[::-1]).cast(KEY_TYPE),
            "x": pa.array(np.arange(n, dtype="float64")[::-1]),
        },
    )


@pytest.mark.emulator
def test_read_of_many_streams_is_parallel_and_sorted(
    bigquery_emulator: BigQueryEmulator, big_table: tuple[str, pa.Table]
) -> None:
    dataset, data = big_table
    wh = bigquery_emulator.warehouse(dataset, dataset, max_read_streams=3)
    session_streams = wh.read_client.create_read_session(
        parent=f"projects/{bigquery_emulator.project}",
        read_session={
            "table": f"projects/{bigquery_emulator.project}/datasets/{dataset}/tables/big",
            "data_format": "ARROW",
        },
        max_stream_count=3,
    ).streams
    assert len(session_streams) == 3
    result = wh.read(dataset, "big", [KEY, "x"], DateRange()).data
    assert result.equals(data.sort_by(KEY))
    wh.close()


@pytest.mark.emulator
def test_connection_lost_mid_stream_is_resumed(
    bigquery_emulator: BigQueryEmulator, big_table: tuple[str, pa.Table]
) -> None:
    """The gRPC connection is reset after 1 MB of the three streams' ~4 MB of responses."""
    dataset, data = big_table
    with TcpFaultProxy(
        bigquery_emulator.grpc_endpoint, drops=1, cut_after_bytes=1_000_000, cut_with_reset=True
    ) as proxy:
        wh = bigquery_emulator.warehouse(
            dataset, dataset, read_endpoint=proxy.endpoint, max_read_streams=3
        )
        result = wh.read(dataset, "big", [KEY, "x"], DateRange()).data
        assert proxy.faults_injected == 1 and proxy.cuts == 1 and proxy.forwarded >= 1
        # Every row once: the streams went on from the rows they had, not from their starts.
        assert result.num_rows == data.num_rows
        assert pc.count_distinct(result[KEY]).as_py() == data.num_rows
        assert result.equals(data.sort_by(KEY))
        wh.close()


@pytest.fixture(scope="module")
def long_table(bigquery_emulator: BigQueryEmulator) -> tuple[str, pa.Table]:
    """1,500,000 keys: one read stream that the emulator sends as two responses (1,000,000 rows,
    8 MB, then 500,000)."""
    return _loaded(
        bigquery_emulator, "long", {KEY: pa.array(_minute_keys(1_500_000)).cast(KEY_TYPE)}
    )


@pytest.mark.emulator
def test_stream_cut_after_a_response_resumes_at_the_next_row(
    bigquery_emulator: BigQueryEmulator, long_table: tuple[str, pa.Table]
) -> None:
    """The connection ends 9 MB in: after the first response (8 MB), inside the second. Ended,
    not reset: a reset loses what the proxy has not yet passed on, and the first response with it
    when the client reads slowly."""
    dataset, data = long_table
    with TcpFaultProxy(
        bigquery_emulator.grpc_endpoint, drops=1, cut_after_bytes=9_000_000
    ) as proxy:
        wh = bigquery_emulator.warehouse(
            dataset, dataset, read_endpoint=proxy.endpoint, max_read_streams=1
        )
        read = wh.read(dataset, "long", [KEY], DateRange())
        assert proxy.cuts == 1
        # The stream went on at row 1,000,000 (ReadRowsRequest.offset), not from its start...
        assert [offset for _, offset in wh.resumes] == [1_000_000]
        assert wh.retries == 1
        # ...so every row arrived once, and the bytes received are the table's once.
        assert read.data.num_rows == data.num_rows
        assert pc.count_distinct(read.data[KEY]).as_py() == data.num_rows
        assert read.data.equals(data)
        assert read.bytes_read < 12_100_000
        wh.close()


# -- states --------------------------------------------------------------------------------------
@pytest.mark.emulator
def test_state_changes_when_rows_are_appended(bigquery_emulator: BigQueryEmulator) -> None:
    keys = pa.array(_minute_keys(330)).cast(KEY_TYPE)
    first = pa.table({KEY: keys, "x": pa.array(np.arange(330, dtype="float64"))})
    dataset, _ = _loaded(bigquery_emulator, "grows", {c: first[c] for c in first.column_names})
    wh = bigquery_emulator.warehouse(dataset, dataset)
    before = wh.state(dataset, "grows")
    assert before.rows == 330 and before.bytes > 0
    assert datetime.fromisoformat(before.last_modified).tzinfo is not None
    later = pc.add(keys, pa.scalar(timedelta(days=1), pa.duration("us"))).cast(KEY_TYPE)
    load_tables(bigquery_emulator.client(), dataset, {"grows": first.set_column(0, KEY, later)})
    after = wh.state(dataset, "grows")
    assert after.rows == 660
    assert after.version != before.version
    assert after.bytes > before.bytes
    # BigQuery moves lastModifiedTime on every load; local-bigquery 0.3.2 only on metadata
    # changes, so here the row count is what changes the version.
    assert after.last_modified >= before.last_modified
    wh.close()


@pytest.mark.emulator
def test_partition_states_are_each_table_s_days(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    """INFORMATION_SCHEMA.PARTITIONS, one query for a dataset's tables: each table's days of
    DATE(interval_time) and their rows, as the embedded warehouse reports them for the same
    rows; a table that does not exist is left out."""
    embedded = EmbeddedWarehouse(bq_mini.embedded)
    try:
        for dataset, names in (
            (bq_mini.features, [t.name for t in bq_mini.catalog.tables_for("eurusd")]),
            (bq_mini.targets, ["targets_eurusd", "targets_gbpusd"]),
        ):
            states = bq_warehouse.partition_states(dataset, [*names, "agg_usdjpy"])
            assert sorted(states) == sorted(names)
            source_dataset = (
                embedded.catalog().features_dataset
                if dataset == bq_mini.features
                else embedded.catalog().targets_dataset
            )
            local = embedded.partition_states(source_dataset, names)
            assert {n: [(p.day, p.rows) for p in ps] for n, ps in states.items()} == {
                n: [(p.day, p.rows) for p in ps] for n, ps in local.items()
            }
            for days in states.values():
                assert all(datetime.fromisoformat(p.last_modified).tzinfo for p in days)
    finally:
        embedded.close()
    agg = bq_warehouse.partition_states(bq_mini.features, ["agg_eurusd"])["agg_eurusd"]
    assert [(str(p.day), p.rows) for p in agg] == [
        ("2024-01-26", 240), ("2024-01-28", 120), ("2024-01-29", 1440),
        ("2024-01-30", 1440), ("2024-01-31", 1440),
    ]  # fmt: skip


@pytest.mark.emulator
def test_partition_states_of_a_table_not_partitioned_by_day_name_it_alone(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    """The emulator's view has partition_id NULL for a table not partitioned: that table is in
    `errors`, naming it, and the others are described (more odd tables in
    bigquery/test_partitions.py)."""
    states = bq_warehouse.partition_states(bq_mini.features, ["agg_eurusd", SUMMARY_TABLE])
    assert list(states) == ["agg_eurusd"]
    assert list(states.errors) == [SUMMARY_TABLE]
    assert states.errors[SUMMARY_TABLE].startswith("not partitioned (partition_id NULL); ")


# -- exports -------------------------------------------------------------------------------------
@pytest.mark.emulator
def test_export_writes_the_table_as_parquet(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    name = "tri_agg_bqx_eur_usd_gbp"
    uri = f"gs://bqx-ml-staging/exports/{bq_mini.features}/{name}-*.parquet"
    result = bq_warehouse.export(bq_mini.features, name, uri)
    assert result.file_counts == (1,)
    path = bq_mini.emulator.gcs_path(uri.replace("*", "000000000000"))
    source = bq_mini.rows[name]
    exported = pq.read_table(path).cast(source.schema).sort_by(KEY)
    path.unlink()
    assert exported.equals(source)


@pytest.mark.emulator
def test_export_table_selects_and_sorts_like_read(
    bq_mini: BigQueryMini, bq_warehouse: BigQueryWarehouse
) -> None:
    """The whole table from an extract job: the columns asked for (`pair` too when asked), sorted
    by the key, no bytes billed; the shards are deleted afterwards, whatever the outcome."""
    name = "div_bqx_eurusd"
    columns = [c.name for c in bq_mini.catalog.table(name).columns]
    wanted = [KEY, columns[-1], PAIR_COLUMN]
    result = bq_warehouse.export_table(bq_mini.features, name, wanted, STAGING)
    assert result.bytes_read == 0
    assert result.data.column_names == wanted
    assert result.data.equals(bq_mini.rows[name].select(wanted))
    checkpoint_columns = expected_schema(bq_mini.catalog.table(name)).names
    read = bq_warehouse.read(bq_mini.features, name, checkpoint_columns, DateRange())
    exported = bq_warehouse.export_table(bq_mini.features, name, read.data.column_names, STAGING)
    assert exported.data.equals(read.data)
    assert _staged(bq_mini) == []
    with pytest.raises(WarehouseError, match=rf"{name}: no column\(s\) no_such_column"):
        bq_warehouse.export_table(bq_mini.features, name, [KEY, "no_such_column"], STAGING)
    assert _staged(bq_mini) == []
    # The extract job itself fails naming a table that does not exist.
    with pytest.raises(WarehouseError, match=rf"{bq_mini.features}\.agg_bqx_gbpusd"):
        bq_warehouse.export_table(bq_mini.features, "agg_bqx_gbpusd", [KEY], STAGING)
    assert _staged(bq_mini) == []


# -- retries -------------------------------------------------------------------------------------
@pytest.mark.emulator
def test_transient_faults_are_retried(bq_mini: BigQueryMini) -> None:
    """503s on the REST API and dropped gRPC connections, then success."""
    emulator = bq_mini.emulator
    with (
        HttpFaultProxy(emulator.rest_endpoint, faults=3) as rest,
        TcpFaultProxy(emulator.grpc_endpoint, drops=2) as grpc_proxy,
    ):
        wh = bq_mini.warehouse(api_endpoint=rest.endpoint, read_endpoint=grpc_proxy.endpoint)
        state = wh.state(bq_mini.features, "mkt_sentiment")
        assert state.rows == bq_mini.rows["mkt_sentiment"].num_rows
        assert rest.faults_injected == 3 and rest.forwarded >= 1
        name = "cov_agg_eurusd_gbpusd"
        wanted = expected_schema(bq_mini.catalog.table(name)).names
        data = wh.read(bq_mini.features, name, wanted, WINDOW).data
        assert data.equals(bq_mini.expected(name, wanted, WINDOW))
        assert grpc_proxy.faults_injected == 2 and grpc_proxy.forwarded >= 1
        # Every injected fault cost at least one retry (a dropped gRPC connection fails the
        # call in flight, and the channel may fail fast once more while it reconnects).
        assert wh.retries >= 5
        wh.close()


@pytest.mark.emulator
def test_rate_limit_429_is_retried(bq_mini: BigQueryMini) -> None:
    with HttpFaultProxy(bq_mini.emulator.rest_endpoint, faults=2, status=429) as rest:
        wh = bq_mini.warehouse(api_endpoint=rest.endpoint)
        assert (
            wh.state(bq_mini.features, "csi_agg_eur").rows == bq_mini.rows["csi_agg_eur"].num_rows
        )
        assert rest.faults_injected == 2 and wh.retries == 2
        wh.close()


@pytest.mark.emulator
def test_faults_beyond_the_retry_budget_fail_naming_the_table(bq_mini: BigQueryMini) -> None:
    with HttpFaultProxy(bq_mini.emulator.rest_endpoint, faults=1000) as rest:
        wh = bq_mini.warehouse(
            api_endpoint=rest.endpoint,
            retry=RetrySettings(attempts=3, initial_s=0.01, maximum_s=0.02),
        )
        with pytest.raises(
            WarehouseError, match=rf"{bq_mini.features}\.mkt_sentiment: still failing"
        ):
            wh.state(bq_mini.features, "mkt_sentiment")
        assert rest.faults_injected == 3
        wh.close()


# -- the Dagster resource ------------------------------------------------------------------------
@pytest.mark.emulator
def test_dagster_resource_opens_the_warehouse_on_the_emulator(bq_mini: BigQueryMini) -> None:
    from bqx_assets.defs.resources import BigQueryWarehouseResource

    resource = BigQueryWarehouseResource(
        project=bq_mini.emulator.project,
        features_dataset=bq_mini.features,
        targets_dataset=bq_mini.targets,
        api_endpoint=bq_mini.emulator.rest_endpoint,
        read_endpoint=bq_mini.emulator.grpc_endpoint,
    )
    wh = resource.open()
    try:
        assert (
            wh.state(bq_mini.features, "mkt_sentiment").rows
            == bq_mini.rows["mkt_sentiment"].num_rows
        )
        wanted = [KEY, "bqx_45"]
        data = wh.read(bq_mini.targets, "targets_eurusd", wanted, WINDOW).data
        assert data.equals(bq_mini.expected("targets_eurusd", wanted, WINDOW))
    finally:
        wh.close()
