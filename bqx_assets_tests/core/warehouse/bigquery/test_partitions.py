"""Day partitions from INFORMATION_SCHEMA.PARTITIONS through the emulator, with a proxy that
answers as BigQuery where the emulator cannot: the view's 1,000-table limit, the bytes a
metadata query bills, partitions other than days, per-partition modification times."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY, KEY_TYPE
from bqx_assets.core.warehouse import PartitionState
from bqx_assets.core.warehouse.bigquery import RetrySettings
from bqx_assets.core.warehouse.bigquery.partitions import PARTITIONS_TABLE_LIMIT, TOO_MANY_TABLES
from bqx_assets_tests.core.warehouse.conftest import open_warehouse
from emulators.bigquery import BigQueryEmulator, load_tables
from emulators.bigquery_limits import PartitionsAnswer, SlowJobs, partitions_table_limit
from emulators.proxy import HttpAnswerProxy

pytestmark = pytest.mark.emulator

DAY = datetime(2024, 1, 29, tzinfo=UTC)
BILLED = 10 * 1024 * 1024
"""What the proxy bills per metadata query (BigQuery's minimum)."""


def _tiny(names: list[str]) -> dict[str, pa.Table]:
    """One row on 2024-01-29 per table (partitioned by DATE(interval_time) when loaded)."""
    return {
        n: pa.table({KEY: pa.array([DAY], KEY_TYPE), "x": pa.array([float(i)])})
        for i, n in enumerate(names)
    }


def _partition_jobs(proxy: HttpAnswerProxy) -> list[list[str]]:
    """The table names of each PARTITIONS query job the client inserted, in order."""
    out = []
    for exchange in proxy.sent("POST", "/jobs"):
        query = exchange.json()["configuration"]["query"]
        if "INFORMATION_SCHEMA.PARTITIONS" in query["query"]:
            values = query["queryParameters"][0]["parameterValue"]["arrayValues"]
            out.append([v["value"] for v in values])
    return out


def test_partitions_are_asked_in_batches_within_the_view_s_limit(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    """Five tables and an absent one, batches of two under a proxy whose limit is two
    (BigQuery's 1,000 made small): three queries, none over the limit, every table described,
    each query's billed bytes counted; a batch over the limit is refused with BigQuery's
    error."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("batches")
    names = [f"agg_{i:02d}" for i in range(5)]
    load_tables(emulator.client(), dataset, _tiny(names))
    answer = PartitionsAnswer(billed=BILLED)
    with HttpAnswerProxy(
        emulator.rest_endpoint, before=[partitions_table_limit(2)], after=[answer]
    ) as proxy:
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint,
                            partitions_batch=2)  # fmt: skip
        try:
            states = wh.partition_states(dataset, [*reversed(names), "absent"])
            assert sorted(states) == names and not states.errors
            assert {n: [(p.day, p.rows) for p in s] for n, s in states.items()} == {
                n: [(date(2024, 1, 29), 1)] for n in names
            }
            asked = _partition_jobs(proxy)
            # Six names (one absent) in batches of two; the first batch is asked twice: with
            # last_modified_time (refused by the emulator's view), then without.
            assert [len(a) for a in asked] == [2, 2, 2, 2]
            assert sorted({n for a in asked for n in a}) == sorted([*names, "absent"])
            assert [what for what, _ in wh.query_jobs] == [
                f"{dataset}.INFORMATION_SCHEMA.PARTITIONS"
            ] * 3
            assert wh.bytes_billed == 3 * BILLED
        finally:
            wh.close()
        over = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint,
                              partitions_batch=3)  # fmt: skip
        try:
            with pytest.raises(WarehouseError, match=rf"{dataset}\.INFORMATION_SCHEMA") as err:
                over.partition_states(dataset, names)
            assert TOO_MANY_TABLES in str(err.value)
        finally:
            over.close()


def test_a_batch_size_over_bigquery_s_limit_is_refused() -> None:
    from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse

    with pytest.raises(
        WarehouseError, match=f"partitions_batch 1001: must be 1 to {PARTITIONS_TABLE_LIMIT}"
    ):
        BigQueryWarehouse("p", "f", "t", api_endpoint="http://127.0.0.1:9",
                          read_endpoint="127.0.0.1:9", partitions_batch=1001)  # fmt: skip


ODD = {
    "flat": [(None, 5)],
    "hourly": [("2024012903", 3)],
    "monthly": [("202401", 3)],
    "yearly": [("2024", 3)],
    "ranged": [("100", 3)],
    "nulls": [("20240129", 1), ("__NULL__", 2)],
    "streaming": [("20240129", 1), ("__UNPARTITIONED__", 4)],
    "quiet": [("20240129", 1), ("__NULL__", 0), ("__UNPARTITIONED__", 0)],
}
"""The PARTITIONS rows BigQuery has for tables partitioned otherwise than by day."""

REASONS = {
    "flat": "not partitioned (partition_id NULL)",
    "hourly": "partitioned by hour, not by day (partition '2024012903', 3 rows)",
    "monthly": "partitioned by month, not by day (partition '202401', 3 rows)",
    "yearly": "partitioned by year, not by day (partition '2024', 3 rows)",
    "ranged": "partitioned by an integer range, not by day (partition '100', 3 rows)",
    "nulls": f"2 rows with a NULL {KEY} (partition __NULL__)",
    "streaming": "4 rows in the streaming buffer (partition __UNPARTITIONED__)",
}


def test_each_table_no_day_describes_is_an_error_of_its_own(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    """Tables not partitioned, partitioned by hour, month, year or integer range, with rows
    in `__NULL__` or in the streaming buffer: each in `errors` naming it and why; the other
    tables described as usual (empty `__NULL__` / `__UNPARTITIONED__` rows are skipped)."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("odd")
    names = [*ODD, "agg_ok"]
    client = emulator.client()
    load_tables(client, dataset, _tiny(["agg_ok"]))
    for name in ODD:  # their rows are the proxy's answer
        client.create_table(f"{emulator.project}.{dataset}.{name}")
    with HttpAnswerProxy(emulator.rest_endpoint, after=[PartitionsAnswer(ODD)]) as proxy:
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint)
        try:
            states = wh.partition_states(dataset, names)
        finally:
            wh.close()
    assert sorted(states) == ["agg_ok", "quiet"]
    assert [(p.day, p.rows) for p in states["quiet"]] == [(date(2024, 1, 29), 1)]
    assert set(states.errors) == set(REASONS)
    for name, why in REASONS.items():
        assert states.errors[name] == (
            f"{why}; a refresh by day needs every row in a day partition of DATE({KEY})"
        )


def test_each_day_keeps_its_own_time_where_bigquery_reports_it(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    """BigQuery's view has `last_modified_time` per partition (the emulator's does not; the
    proxy answers it): each day keeps its own, so a change to one day leaves the others'
    states as they were; one query per batch, no fallback, no tables.get."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("timed")
    load_tables(emulator.client(), dataset, _tiny(["agg", "tmp"]))
    monday = datetime(2024, 1, 29, 3, 4, 5, tzinfo=UTC)
    tuesday = datetime(2024, 1, 30, 6, 7, 8, tzinfo=UTC)
    rows = {"agg": [("20240129", 1440), ("20240130", 60), ("__NULL__", 0)],
            "tmp": [("20240130", 60)]}  # fmt: skip
    times = {("agg", "20240129"): monday, ("agg", "20240130"): tuesday,
             ("tmp", "20240130"): tuesday}  # fmt: skip
    answer = PartitionsAnswer(rows, times=times)
    with HttpAnswerProxy(emulator.rest_endpoint, after=[answer],
                         rewrite=[answer.rewrite]) as proxy:  # fmt: skip
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint)
        try:
            states = wh.partition_states(dataset, ["tmp", "agg", "agg"])
        finally:
            wh.close()
        assert _partition_jobs(proxy) == [["agg", "tmp"]]
        assert not proxy.sent("GET", "/tables/")
    assert states == {
        "agg": (
            PartitionState(date(2024, 1, 29), 1440, monday.isoformat()),
            PartitionState(date(2024, 1, 30), 60, tuesday.isoformat()),
        ),
        "tmp": (PartitionState(date(2024, 1, 30), 60, tuesday.isoformat()),),
    }
    assert not states.errors


def test_without_day_times_each_day_takes_its_table_s_and_the_view_is_asked_once(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    """The emulator's view refuses `last_modified_time`: each day takes its table's
    last-modified time, and the warehouse asks without the column from then on."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("untimed")
    load_tables(emulator.client(), dataset, _tiny(["agg"]))
    with HttpAnswerProxy(emulator.rest_endpoint) as proxy:
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint)
        try:
            changed = wh.state(dataset, "agg").last_modified
            for _ in range(2):
                states = wh.partition_states(dataset, ["agg"])
                assert states == {"agg": (PartitionState(date(2024, 1, 29), 1, changed),)}
        finally:
            wh.close()
        queries = [e.json()["configuration"]["query"]["query"]
                   for e in proxy.sent("POST", "/jobs")]  # fmt: skip
    selected = ["last_modified_time AS" in q and "NULL AS" not in q for q in queries]
    assert selected == [True, False, False]


def test_a_catalog_of_2500_tables_is_asked_in_batches_of_1000(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    """2,500 tables behind a proxy with BigQuery's limit of 1,000 tables a query: three
    batches (1000, 1000, 500), every table described with its days' own times, three queries
    billed. The emulator holds a few of the tables and the proxy answers the view for all of
    them as BigQuery would: local-bigquery slows down with every table a dataset holds
    (creating 2,500 did not finish in 30 minutes)."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("wide")
    names = [f"t_{i:04d}" for i in range(2500)]
    load_tables(emulator.client(), dataset, _tiny(names[:3]))
    rows = {n: [("20240129", 1)] for n in names}
    times = {(n, "20240129"): DAY for n in names}
    answer = PartitionsAnswer(rows, billed=BILLED, times=times)
    with HttpAnswerProxy(
        emulator.rest_endpoint,
        before=[partitions_table_limit(PARTITIONS_TABLE_LIMIT)],
        after=[answer],
        rewrite=[answer.rewrite],
    ) as proxy:
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint)
        try:
            states = wh.partition_states(dataset, names)
        finally:
            wh.close()
        asked = _partition_jobs(proxy)
    assert sorted(states) == names and not states.errors
    assert {p for s in states.values() for p in s} == {
        PartitionState(date(2024, 1, 29), 1, DAY.isoformat())
    }
    assert [len(a) for a in asked] == [1000, 1000, 500]
    assert sorted(n for a in asked for n in a) == names
    assert wh.bytes_billed == 3 * BILLED


def test_a_partitions_query_running_past_its_poll_timeout_is_polled_not_run_again(
    bigquery_emulator: BigQueryEmulator,
) -> None:
    """The query job reports RUNNING for 2 s, each poll gives up after 0.3 s: one jobs.insert
    (beside the first one, of `last_modified_time`, which the emulator's view refuses), the job
    polled by id until done, its bytes billed once, the states those of the tables. Held
    RUNNING past every attempt, the look-up fails naming the view, and its one job is cancelled
    (`job.result(timeout=)` raising does not stop a job)."""
    emulator = bigquery_emulator
    dataset = emulator.dataset("slow_query")
    names = ["agg_a", "agg_b"]
    load_tables(emulator.client(), dataset, _tiny(names))
    slow = SlowJobs(seconds=2.0, kind="query")
    answer = PartitionsAnswer(billed=BILLED)
    with HttpAnswerProxy(
        emulator.rest_endpoint, before=[slow.duplicate], after=[slow, answer]
    ) as proxy:
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint,
                            rpc_timeout_s=0.3)  # fmt: skip
        try:
            states = wh.partition_states(dataset, names)
        finally:
            wh.close()
        assert sorted(states) == names
        _, job_id = slow.inserts()
        assert len(proxy.sent("GET", f"/queries/{job_id}")) >= 3
        assert wh.bytes_billed == BILLED and slow.cancelled == []

    stuck = SlowJobs(seconds=3600.0, kind="query")
    with HttpAnswerProxy(
        emulator.rest_endpoint, before=[stuck.duplicate], after=[stuck, answer]
    ) as proxy:
        retry = RetrySettings(attempts=3, initial_s=0.05, maximum_s=0.1)
        wh = open_warehouse(emulator, dataset, dataset, api_endpoint=proxy.endpoint,
                            rpc_timeout_s=0.2, retry=retry)  # fmt: skip
        try:
            with pytest.raises(WarehouseError, match=rf"{dataset}\.INFORMATION_SCHEMA"):
                wh.partition_states(dataset, names)
        finally:
            wh.close()
        _, job_id = stuck.inserts()
        assert stuck.cancelled == [job_id]
