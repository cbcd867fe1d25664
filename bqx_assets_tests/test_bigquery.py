"""BigQueryWarehouse against the local-bigquery emulator: schema, reads, state, retries, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog, Column, catalog_from_schema
from bqx_assets.core.checkpoints.extraction import (
    Source,
    expected_schema,
    extract_tables,
    owner_of,
    require_checkpoints,
)
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import ARROW_TYPES, KEY, KEY_TYPE, PAIR_COLUMN, checkpoint_key
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse, RetrySettings
from bqx_assets_tests.emulators.bigquery import (
    BigQueryEmulator,
    HttpFaultProxy,
    TcpFaultProxy,
    bigquery_emulator,  # noqa: F401 - the session fixture
    load_tables,
)

pytestmark = pytest.mark.emulator

PAIRS = ("eurusd", "audusd")
FEATURE_TABLES = (
    "agg_bqx_eurusd",  # INT64 counts among FLOAT64
    "div_eurusd",  # the BOOL column
    "base_idx_eurusd",  # constant STRING columns
    "base_bqx_eurusd",  # target_* leak columns
    "regime_eurusd_45",  # regime label STRING
    "lag_idx_eurusd_w45",
    "corr_etf_idx_eurusd_ewa",
    "cov_agg_audusd_eurusd",
    "tri_agg_bqx_eur_chf_aud",
    "mkt_corr",
    "var_agg_bqx_aud",
    "csi_agg_aud",
)
SUMMARY_TABLE = "mkt_reg_summary"
FRIDAY = datetime(2024, 1, 5, 18, 0, tzinfo=UTC)
SUNDAY = datetime(2024, 1, 7, 22, 0, tzinfo=UTC)
WINDOW = DateRange(datetime(2024, 1, 5, 21, 0, tzinfo=UTC), datetime(2024, 1, 7, 23, 0, tzinfo=UTC))


def minutes() -> pa.Array:
    """Friday 18:00-22:00 and Sunday 22:00-23:30 UTC, one row a minute: FX hours, weekend gap."""
    times = [FRIDAY + timedelta(minutes=i) for i in range(240)]
    times += [SUNDAY + timedelta(minutes=i) for i in range(90)]
    return pa.array(times, KEY_TYPE)


def source_table(
    name: str, columns: tuple[Column, ...], pair: str | None, seed: int = 0
) -> pa.Table:
    """Production-shaped rows: the key, `pair` for pair tables, values with ~10% nulls, rows in
    shuffled order (Storage Read does not order rows, so the reader must sort)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()) + seed)
    key = minutes()
    n = len(key)
    arrays: dict[str, pa.Array] = {KEY: key}
    if pair is not None:
        arrays[PAIR_COLUMN] = pa.array([pair] * n)
    for column in columns:
        nulls = rng.random(n) < 0.1
        if column.dtype == "FLOAT64":
            values = pa.array(rng.normal(0, 0.087, n), mask=nulls)
        elif column.dtype == "INT64":
            values = pa.array(rng.integers(0, 500, n), pa.int64(), mask=nulls)
        elif column.dtype == "BOOL":
            values = pa.array(rng.random(n) < 0.5, mask=nulls)
        else:
            values = pa.array([f"{column.name}_value"] * n)
        arrays[column.name] = values
    data = pa.table(arrays)
    return data.take(pa.array(rng.permutation(n)))


@dataclass
class Subset:
    """The production-shaped subset loaded into the emulator."""

    emulator: BigQueryEmulator
    features: str
    targets: str
    catalog: Catalog
    sources: dict[str, pa.Table]
    """Table name -> the rows loaded (features and targets)."""

    def warehouse(self, **kwargs: object) -> BigQueryWarehouse:
        kwargs.setdefault("location", "us-central1")  # production's region
        return self.emulator.warehouse(self.features, self.targets, **kwargs)  # type: ignore[arg-type]

    def expected(self, name: str, columns: list[str], window: DateRange) -> pa.Table:
        data = self.sources[name]
        mask = pc.and_(
            pc.greater_equal(data[KEY], pa.scalar(window.start, KEY_TYPE)),
            pc.less(data[KEY], pa.scalar(window.end, KEY_TYPE)),
        )
        return data.filter(mask).sort_by(KEY).select(columns)


def load_subset(emulator: BigQueryEmulator) -> Subset:
    """Load the subset into two new datasets of the emulator (features, targets)."""
    catalog = Catalog.load()
    features = emulator.dataset("features")
    targets = emulator.dataset("targets")
    sources: dict[str, pa.Table] = {}
    for name in FEATURE_TABLES:
        table = catalog.table(name)
        pair = table.pairs[0] if table.scope in ("pair", "corr") else None
        sources[name] = source_table(name, table.columns, pair)
    # A summary table: no interval_time, so refreshing the catalog must leave it out.
    summary = pa.table({"regime": ["calm", "trend"], "minutes": pa.array([10, 20], pa.int64())})
    target_tables = {
        catalog.targets[p].name: source_table(
            catalog.targets[p].name, catalog.targets[p].columns, p
        )
        for p in PAIRS
    }
    client = emulator.client()
    load_tables(client, features, {**sources, SUMMARY_TABLE: summary})
    load_tables(client, targets, target_tables)
    sources.update(target_tables)
    return Subset(emulator, features, targets, catalog, sources)


@pytest.fixture(scope="module")
def subset(bigquery_emulator: BigQueryEmulator) -> Subset:  # noqa: F811
    return load_subset(bigquery_emulator)


@pytest.fixture
def warehouse(subset: Subset) -> Iterator[BigQueryWarehouse]:
    wh = subset.warehouse()
    yield wh
    wh.close()


def test_information_schema_refreshes_the_catalog(subset: Subset, warehouse: BigQueryWarehouse):
    rows = warehouse.information_schema()
    refreshed = catalog_from_schema(
        rows,
        project=subset.emulator.project,
        features_dataset=subset.features,
        targets_dataset=subset.targets,
        pairs=PAIRS,
    )
    assert sorted(refreshed.tables) == sorted(FEATURE_TABLES)
    assert SUMMARY_TABLE in refreshed.excluded
    for name in FEATURE_TABLES:
        production = subset.catalog.table(name)
        table = refreshed.tables[name]
        assert table.columns == production.columns, name
        assert (table.family, table.scope) == (production.family, production.scope), name
    assert refreshed.tables["cov_agg_audusd_eurusd"].pairs == ("eurusd", "audusd")
    for pair in PAIRS:
        assert refreshed.targets[pair].columns == subset.catalog.targets[pair].columns


def test_read_returns_the_window_sorted_without_pair(subset: Subset, warehouse: BigQueryWarehouse):
    for name in (*FEATURE_TABLES, "targets_eurusd"):
        columns = (
            subset.catalog.table(name).columns
            if name in subset.catalog.tables
            else subset.catalog.targets["eurusd"].columns
        )
        wanted = [KEY, *(c.name for c in columns)]
        result = warehouse.read(
            subset.features if name in FEATURE_TABLES else subset.targets, name, wanted, WINDOW
        )
        data = result.data
        assert data.schema.field(KEY).type == pa.timestamp("us", tz="UTC")
        assert data.column_names == wanted, name
        assert PAIR_COLUMN not in data.column_names
        expected = subset.expected(name, wanted, WINDOW)
        assert data.num_rows == 120  # Friday 21:00-22:00 and Sunday 22:00-23:00
        assert data.equals(expected), name
        assert result.bytes_read > 0


def test_read_keeps_the_requested_column_order_and_pair_when_asked(
    subset: Subset, warehouse: BigQueryWarehouse
):
    name = "div_eurusd"
    columns = [c.name for c in subset.catalog.table(name).columns]
    wanted = [KEY, columns[-1], PAIR_COLUMN, columns[0]]
    data = warehouse.read(subset.features, name, wanted, WINDOW).data
    assert data.equals(subset.expected(name, wanted, WINDOW))
    whole = warehouse.read(subset.features, name, [KEY, columns[0]], DateRange()).data
    assert whole.num_rows == subset.sources[name].num_rows


def _loaded(
    emulator: BigQueryEmulator, name: str, columns: dict[str, pa.Array]
) -> tuple[str, pa.Table]:
    data = pa.table(columns)
    dataset = emulator.dataset(name)
    load_tables(emulator.client(), dataset, {name: data})
    return dataset, data


def _minute_keys(n: int) -> np.ndarray:
    return np.datetime64("2023-01-02T00:00", "us") + np.arange(n) * 60_000_000


@pytest.fixture(scope="module")
def big_table(bigquery_emulator: BigQueryEmulator) -> tuple[str, pa.Table]:  # noqa: F811
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


def test_read_of_many_streams_is_parallel_and_sorted(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    big_table: tuple[str, pa.Table],
):
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


def test_connection_lost_mid_stream_is_resumed(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    big_table: tuple[str, pa.Table],
):
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
def long_table(bigquery_emulator: BigQueryEmulator) -> tuple[str, pa.Table]:  # noqa: F811
    """1,500,000 keys: one read stream that the emulator sends as two responses (1,000,000 rows,
    8 MB, then 500,000)."""
    return _loaded(
        bigquery_emulator, "long", {KEY: pa.array(_minute_keys(1_500_000)).cast(KEY_TYPE)}
    )


def test_stream_cut_after_a_response_resumes_at_the_next_row(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    long_table: tuple[str, pa.Table],
):
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


def test_state_changes_when_rows_are_appended(bigquery_emulator: BigQueryEmulator):  # noqa: F811
    dataset = bigquery_emulator.dataset("state")
    client = bigquery_emulator.client()
    columns = (Column("x", "FLOAT64"),)
    load_tables(client, dataset, {"grows": source_table("grows", columns, "eurusd")})
    wh = bigquery_emulator.warehouse(dataset, dataset)
    before = wh.state(dataset, "grows")
    assert before.rows == 330 and before.bytes > 0
    assert datetime.fromisoformat(before.last_modified).tzinfo is not None
    load_tables(client, dataset, {"grows": source_table("grows", columns, "eurusd", seed=1)})
    after = wh.state(dataset, "grows")
    assert after.rows == 660
    assert after.version != before.version
    assert after.bytes > before.bytes
    # BigQuery moves lastModifiedTime on every load; local-bigquery 0.3.2 only on metadata
    # changes, so here the row count is what changes the version.
    assert after.last_modified >= before.last_modified
    wh.close()


def test_transient_faults_are_retried(subset: Subset):
    """503s on the REST API and dropped gRPC connections, then success."""
    emulator = subset.emulator
    with (
        HttpFaultProxy(emulator.rest_endpoint, faults=3) as rest,
        TcpFaultProxy(emulator.grpc_endpoint, drops=2) as grpc_proxy,
    ):
        wh = subset.warehouse(api_endpoint=rest.endpoint, read_endpoint=grpc_proxy.endpoint)
        state = wh.state(subset.features, "mkt_corr")
        assert state.rows == 330
        assert rest.faults_injected == 3 and rest.forwarded >= 1
        name = "cov_agg_audusd_eurusd"
        wanted = [KEY, *(c.name for c in subset.catalog.table(name).columns)]
        data = wh.read(subset.features, name, wanted, WINDOW).data
        assert data.equals(subset.expected(name, wanted, WINDOW))
        assert grpc_proxy.faults_injected == 2 and grpc_proxy.forwarded >= 1
        # Every injected fault cost at least one retry (a dropped gRPC connection fails the
        # call in flight, and the channel may fail fast once more while it reconnects).
        assert wh.retries >= 5
        wh.close()


def test_rate_limit_429_is_retried(subset: Subset):
    with HttpFaultProxy(subset.emulator.rest_endpoint, faults=2, status=429) as rest:
        wh = subset.warehouse(api_endpoint=rest.endpoint)
        assert wh.state(subset.features, "csi_agg_aud").rows == 330
        assert rest.faults_injected == 2 and wh.retries == 2
        wh.close()


def test_faults_beyond_the_retry_budget_fail_naming_the_table(subset: Subset):
    with HttpFaultProxy(subset.emulator.rest_endpoint, faults=1000) as rest:
        wh = subset.warehouse(
            api_endpoint=rest.endpoint,
            retry=RetrySettings(attempts=3, initial_s=0.01, maximum_s=0.02),
        )
        with pytest.raises(WarehouseError, match=rf"{subset.features}\.mkt_corr: still failing"):
            wh.state(subset.features, "mkt_corr")
        assert rest.faults_injected == 3
        wh.close()


def test_missing_table_fails_at_once_naming_it(subset: Subset, warehouse: BigQueryWarehouse):
    with pytest.raises(WarehouseError, match=rf"{subset.features}\.agg_gbpusd"):
        warehouse.read(subset.features, "agg_gbpusd", [KEY, "agg_mean_45"], WINDOW)
    with pytest.raises(WarehouseError, match=rf"{subset.features}\.agg_gbpusd"):
        warehouse.state(subset.features, "agg_gbpusd")
    assert warehouse.retries == 0


def test_information_schema_falls_back_to_the_tables_api(
    subset: Subset, warehouse: BigQueryWarehouse
):
    """Where the INFORMATION_SCHEMA query is refused (400 invalidQuery), the same rows come from
    listing the tables and their schemas."""
    with HttpFaultProxy(
        subset.emulator.rest_endpoint,
        faults=2,
        status=400,
        reason="invalidQuery",
        path_contains="/queries",
    ) as rest:
        wh = subset.warehouse(api_endpoint=rest.endpoint)
        listed = wh.information_schema()
        assert rest.faults_injected == 2
        wh.close()
    assert sorted(listed, key=str) == sorted(warehouse.information_schema(), key=str)


def test_dagster_resource_opens_the_warehouse_on_the_emulator(subset: Subset):
    from bqx_assets.defs.resources import BigQueryWarehouseResource

    resource = BigQueryWarehouseResource(
        project=subset.emulator.project,
        features_dataset=subset.features,
        targets_dataset=subset.targets,
        api_endpoint=subset.emulator.rest_endpoint,
        read_endpoint=subset.emulator.grpc_endpoint,
    )
    wh = resource.open()
    try:
        assert wh.state(subset.features, "mkt_corr").rows == 330
        wanted = [KEY, "bqx_45"]
        data = wh.read(subset.targets, "targets_eurusd", wanted, WINDOW).data
        assert data.equals(subset.expected("targets_eurusd", wanted, WINDOW))
    finally:
        wh.close()


def test_missing_column_fails_naming_it(subset: Subset, warehouse: BigQueryWarehouse):
    with pytest.raises(WarehouseError, match=r"mkt_corr.*no_such_column"):
        warehouse.read(subset.features, "mkt_corr", [KEY, "no_such_column"], WINDOW)


def test_export_writes_the_table_as_parquet(subset: Subset, warehouse: BigQueryWarehouse):
    name = "tri_agg_bqx_eur_chf_aud"
    uri = f"gs://bqx-ml-staging/exports/{subset.features}/{name}-*.parquet"
    result = warehouse.export(subset.features, name, uri)
    assert result.file_counts == (1,)
    path = subset.emulator.gcs_path(uri.replace("*", "000000000000"))
    exported = pq.read_table(path)
    source = subset.sources[name]
    exported = exported.cast(source.schema).sort_by(KEY)
    assert exported.equals(source.sort_by(KEY))


def test_naive_window_bounds_are_utc(subset: Subset, warehouse: BigQueryWarehouse):
    naive = DateRange(WINDOW.start.replace(tzinfo=None), WINDOW.end.replace(tzinfo=None))
    wanted = [KEY, subset.catalog.table("csi_agg_aud").columns[0].name]
    data = warehouse.read(subset.features, "csi_agg_aud", wanted, naive).data
    assert data.equals(subset.expected("csi_agg_aud", wanted, WINDOW))


# -- extraction against the emulator ---------------------------------------------------------
def eurusd_sources(subset: Subset, warehouse: BigQueryWarehouse) -> list[Source]:
    """eurusd's tables as a catalog refreshed from the emulator names them (its datasets)."""
    catalog = catalog_from_schema(
        warehouse.information_schema(),
        project=subset.emulator.project,
        features_dataset=subset.features,
        targets_dataset=subset.targets,
        pairs=PAIRS,
    )
    return [*catalog.tables_for("eurusd"), catalog.targets["eurusd"]]


def assert_checkpoints_match(subset: Subset, storage: LocalStorage, sources: list[Source]) -> None:
    for source in sources:
        path = storage.local_path(checkpoint_key(owner_of(source), source.name))
        assert path is not None
        checkpoint = pq.read_table(path)
        names = expected_schema(source).names
        expected = subset.expected(source.name, names, WINDOW).cast(checkpoint.schema)
        assert checkpoint.equals(expected), source.name
        assert PAIR_COLUMN not in checkpoint.column_names


def test_extraction_checkpoints_match_the_source(
    subset: Subset, warehouse: BigQueryWarehouse, tmp_path: Path
):
    sources = eurusd_sources(subset, warehouse)
    assert len(sources) == len(FEATURE_TABLES) + 1
    storage = LocalStorage(tmp_path / "checkpoints")
    done = extract_tables(warehouse, sources, storage, window=WINDOW, threads=4)
    assert {c.status for c in done} == {"extracted"}
    assert all(c.manifest.rows == 120 and c.manifest.bytes_read > 0 for c in done)
    assert_checkpoints_match(subset, storage, sources)
    require_checkpoints(storage, sources, "eurusd")
    again = extract_tables(warehouse, sources, storage, window=WINDOW, threads=4)
    assert {c.status for c in again} == {"reused"}


def test_a_changed_source_table_is_extracted_again(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    tmp_path: Path,
):
    catalog = Catalog.load()
    dataset = bigquery_emulator.dataset("changes")
    names = ("mkt_corr", "div_eurusd", "csi_agg_aud")
    sources = [dataclasses.replace(catalog.table(n), dataset=dataset) for n in names]
    client = bigquery_emulator.client()
    load_tables(client, dataset, {s.name: source_table(s.name, s.columns, None) for s in sources})
    wh = bigquery_emulator.warehouse(dataset, dataset)
    storage = LocalStorage(tmp_path)
    extract_tables(wh, sources, storage, window=WINDOW)
    # Ten new minutes inside the window (Sunday before the open) in one table only.
    new = source_table("mkt_corr", sources[0].columns, None, seed=7).slice(0, 10)
    early = pa.array([SUNDAY - timedelta(minutes=10 - i) for i in range(10)], KEY_TYPE)
    load_tables(client, dataset, {"mkt_corr": new.set_column(0, KEY, early)})
    again = {c.source.name: c for c in extract_tables(wh, sources, storage, window=WINDOW)}
    assert {n: c.status for n, c in again.items()} == {
        "mkt_corr": "extracted",
        "div_eurusd": "reused",
        "csi_agg_aud": "reused",
    }
    assert again["mkt_corr"].manifest.rows == 130
    wh.close()


_EXTRACT_SCRIPT = """
import json, sys, time
from datetime import datetime

from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse
from bqx_assets.core.catalog import catalog_from_schema
from bqx_assets.core.checkpoints.extraction import extract_tables
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange

args = json.loads(sys.argv[1])


class Paced(BigQueryWarehouse):
    def read(self, *a, **k):
        time.sleep(args["pause_s"])  # so that the kill lands mid-way through the tables
        return super().read(*a, **k)


wh = Paced(args["project"], args["features"], args["targets"],
           api_endpoint=args["rest"], read_endpoint=args["grpc"])
catalog = catalog_from_schema(wh.information_schema(), project=args["project"],
                              features_dataset=args["features"],
                              targets_dataset=args["targets"], pairs=args["pairs"])
sources = [*catalog.tables_for("eurusd"), catalog.targets["eurusd"]]
window = DateRange(datetime.fromisoformat(args["start"]), datetime.fromisoformat(args["end"]))
extract_tables(wh, sources, LocalStorage(args["root"]), window=window, threads=1)
print("extracted", len(sources))
"""


def test_extraction_resume_after_sigkill(
    subset: Subset, warehouse: BigQueryWarehouse, tmp_path: Path
):
    """A real extraction process killed with SIGKILL mid-way; the re-run extracts only the tables
    without a checkpoint and manifest, and every checkpoint equals an uninterrupted run's."""
    root = tmp_path / "killed"
    script = tmp_path / "extract.py"
    script.write_text(_EXTRACT_SCRIPT)
    args = {
        "project": subset.emulator.project,
        "features": subset.features,
        "targets": subset.targets,
        "rest": subset.emulator.rest_endpoint,
        "grpc": subset.emulator.grpc_endpoint,
        "pairs": list(PAIRS),
        "start": WINDOW.start.isoformat(),
        "end": WINDOW.end.isoformat(),
        "root": str(root),
        "pause_s": 0.15,
    }
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while len(list(root.rglob("*.manifest.json"))) < 4:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert time.monotonic() < deadline, "extraction made no progress"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL

    sources = eurusd_sources(subset, warehouse)
    storage = LocalStorage(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.manifest.json")}
    kept = {p.name.removesuffix(".manifest.json") for p in before}
    assert 4 <= len(kept) < len(sources)

    resumed = extract_tables(warehouse, sources, storage, window=WINDOW, threads=2)
    extracted = {c.source.name for c in resumed if c.status == "extracted"}
    assert extracted == {s.name for s in sources} - kept
    assert {p: p.stat().st_mtime_ns for p in before} == before  # kept manifests untouched
    require_checkpoints(storage, sources, "eurusd")

    clean = LocalStorage(tmp_path / "clean")
    extract_tables(warehouse, sources, clean, window=WINDOW, threads=2)
    for source in sources:
        key = checkpoint_key(owner_of(source), source.name)
        resumed_info, clean_info = storage.stat(key), clean.stat(key)
        assert resumed_info is not None and clean_info is not None
        assert resumed_info.crc32c == clean_info.crc32c, source.name
    assert_checkpoints_match(subset, storage, sources)


@pytest.mark.slow
def test_throughput_against_native_export(
    bigquery_emulator: BigQueryEmulator,  # noqa: F811
    tmp_path: Path,
):
    """Closing figure: MB/s of Storage Read into sorted Arrow, and of the whole extraction
    (read, conform, checkpoint), against the emulator's own parquet export (an extract job) of
    the same tables. `BQX_THROUGHPUT_ROWS` rows a table (default 150,000: two read streams),
    best of `BQX_THROUGHPUT_ROUNDS` (default 3)."""
    rows = int(os.environ.get("BQX_THROUGHPUT_ROWS", "150000"))
    catalog = Catalog.load()
    dataset = bigquery_emulator.dataset("throughput")
    tri_reg = next(t for t in catalog.tables.values() if t.name.startswith("tri_reg_"))
    names = ("agg_bqx_eurusd", "reg_eurusd", tri_reg.name, "cov_agg_audusd_eurusd", "tmp_eurusd")
    sources = [dataclasses.replace(catalog.table(n), dataset=dataset) for n in names]
    start = np.datetime64("2024-01-01T00:00", "us")
    tables = {}
    for source in sources:
        rng = np.random.default_rng(zlib.crc32(source.name.encode()))
        cols = {KEY: pa.array(start + np.arange(rows) * 60_000_000).cast(KEY_TYPE)}
        for c in source.columns:
            if c.dtype == "STRING":
                cols[c.name] = pa.array(["x"] * rows)
            elif c.dtype == "FLOAT64":
                cols[c.name] = pa.array(rng.normal(0, 0.087, rows))
            else:
                cols[c.name] = pa.array(rng.integers(0, 2, rows)).cast(ARROW_TYPES[c.dtype])
        tables[source.name] = pa.table(cols)
    load_tables(bigquery_emulator.client(), dataset, tables)
    megabytes = sum(t.nbytes for t in tables.values()) / 1e6
    wh = bigquery_emulator.warehouse(dataset, dataset, max_read_streams=4)

    # Best of a few interleaved rounds: on a shared machine a single timing is mostly noise.
    read_s = extract_s = export_s = float("inf")
    for round_ in range(int(os.environ.get("BQX_THROUGHPUT_ROUNDS", "3"))):
        started = time.perf_counter()
        for source in sources:
            wh.read(dataset, source.name, tables[source.name].column_names, DateRange())
        read_s = min(read_s, time.perf_counter() - started)
        started = time.perf_counter()
        extract_tables(wh, sources, LocalStorage(tmp_path / f"round{round_}"), threads=4)
        extract_s = min(extract_s, time.perf_counter() - started)
        started = time.perf_counter()
        for source in sources:
            uri = f"gs://bench/{dataset}/{round_}/{source.name}-*.parquet"
            wh.export(dataset, source.name, uri)
        export_s = min(export_s, time.perf_counter() - started)
    wh.close()
    print(
        f"\nBigQuery emulator, {len(sources)} tables x {rows:,} rows, {megabytes:.1f} MB Arrow:"
        f"\n  Storage Read to sorted Arrow {megabytes / read_s:7.1f} MB/s ({read_s:.2f} s)"
        f"\n  extraction to checkpoints    {megabytes / extract_s:7.1f} MB/s ({extract_s:.2f} s)"
        f"\n  native parquet export        {megabytes / export_s:7.1f} MB/s ({export_s:.2f} s)"
        f"\n  extraction / export          {export_s / extract_s:7.2f}x"
    )
