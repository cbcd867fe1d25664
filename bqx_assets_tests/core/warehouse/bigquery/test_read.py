"""Storage Read sessions through the emulator and a gRPC proxy: a session as of the run's cut,
RESOURCE_EXHAUSTED answered with a RetryInfo delay, and bytes labelled as estimates."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from bqx_assets.core.layout import KEY, KEY_TYPE
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.base import Cut
from bqx_assets.core.warehouse.bigquery import RetrySettings
from bqx_assets_tests.core.warehouse.conftest import BigQueryMini, open_warehouse
from emulators.bigquery import BigQueryEmulator, load_tables
from emulators.grpc_proxy import StorageReadProxy

pytestmark = pytest.mark.emulator

NAME = "targets_eurusd"
COLUMNS = [KEY, "bqx_45"]


def _minutes(start: datetime, n: int) -> pa.Table:
    keys = [start + timedelta(minutes=i) for i in range(n)]
    return pa.table({KEY: pa.array(keys, KEY_TYPE), "x": pa.array([float(i) for i in range(n)])})


def test_a_session_reads_the_table_as_of_the_cut(bigquery_emulator: BigQueryEmulator) -> None:
    """The session asks for the table as of `cut.at` (TableModifiers.snapshot_time); without
    a cut, no snapshot time is sent. local-bigquery 0.3.2 ignores the snapshot time (it reads
    the table as it is now): only real BigQuery leaves out the rows appended after the cut."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("cut")
    start = datetime(2024, 1, 29, tzinfo=UTC)
    client = emulator.client()
    load_tables(client, dataset, {"agg": _minutes(start, 10)})
    time.sleep(0.05)
    cut = Cut(datetime.now(UTC))
    time.sleep(0.05)
    load_tables(client, dataset, {"agg": _minutes(start + timedelta(minutes=10), 5)})
    with StorageReadProxy(emulator.grpc_endpoint) as proxy:
        wh = open_warehouse(emulator, dataset, dataset, read_endpoint=proxy.endpoint)
        try:
            as_of = wh.read(dataset, "agg", [KEY, "x"], DateRange(), cut=cut)
            now = wh.read(dataset, "agg", [KEY, "x"], DateRange())
        finally:
            wh.close()
        sent = proxy.create_read_sessions()
    assert [s.read_session.table_modifiers.snapshot_time for s in sent] == [cut.at, None]
    assert now.data.num_rows == 15
    # The emulator's answer, pinned so that a release that honours snapshot_time shows here
    # (then: 10, the rows loaded before the cut).
    assert as_of.data.num_rows == 15
    assert as_of.bytes_estimated and now.bytes_estimated and as_of.bytes_read > 0


def test_resource_exhausted_waits_the_server_s_delay_and_completes(bq_mini: BigQueryMini) -> None:
    """ReadRows refused with RESOURCE_EXHAUSTED and a RetryInfo of 0.4 s for 2 s: each retry
    waits the server's delay (not the back-off's), past the attempt count that other errors
    get, and the read completes with every row."""
    _exhausted_read(bq_mini, seconds=2.0, delay=0.4)


@pytest.mark.slow
def test_a_minute_of_resource_exhausted_is_waited_out(bq_mini: BigQueryMini) -> None:
    _exhausted_read(bq_mini, seconds=60.0, delay=2.0)


def _exhausted_read(bq_mini: BigQueryMini, *, seconds: float, delay: float) -> None:
    emulator = bq_mini.emulator
    window = DateRange()
    with StorageReadProxy(
        emulator.grpc_endpoint, exhausted_s=seconds, retry_delay_s=delay
    ) as proxy:
        wh = bq_mini.warehouse(
            read_endpoint=proxy.endpoint,
            retry=RetrySettings(attempts=3, initial_s=0.01, maximum_s=0.02,
                                quota_budget_s=seconds + 30),
        )  # fmt: skip
        started = time.monotonic()
        try:
            data = wh.read(bq_mini.targets, NAME, COLUMNS, window).data
        finally:
            wh.close()
        took = time.monotonic() - started
    assert data.equals(bq_mini.expected(NAME, COLUMNS, window))
    assert proxy.refused >= seconds / delay - 1 > 3  # more refusals than `attempts`
    assert wh.retries == proxy.refused
    # Each wait was the server's delay, not the back-off's 0.02 s at most.
    assert wh.waited_s == pytest.approx(proxy.refused * delay)
    assert took >= seconds
