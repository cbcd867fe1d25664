"""Extract jobs through the emulator and a proxy that answers as BigQuery where the emulator
cannot: a job still running past the poll timeout, a duplicate job id, the daily export quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY, PAIR_COLUMN
from bqx_assets.core.warehouse.base import Cut
from bqx_assets.core.warehouse.bigquery.export import ExportQuotaError, export_job_id
from bqx_assets_tests.core.warehouse.conftest import BigQueryMini
from emulators.bigquery_limits import SlowJobs, extract_quota_refused
from emulators.proxy import HttpAnswerProxy

pytestmark = pytest.mark.emulator

STAGING = "gs://bqx-ml-staging/exports"
NAME = "div_bqx_eurusd"


def _staged(bq_mini: BigQueryMini) -> list[Path]:
    root = bq_mini.emulator.gcs_path(STAGING)
    return sorted(root.rglob("*.parquet")) if root.exists() else []


def _extract_inserts(proxy: HttpAnswerProxy) -> list[str]:
    """The job id of each extract jobs.insert the client sent."""
    return [
        e.json()["jobReference"]["jobId"]
        for e in proxy.sent("POST", "/jobs")
        if e.route.endswith("/jobs") and "extract" in e.json()["configuration"]
    ]


def _wanted(bq_mini: BigQueryMini) -> list[str]:
    return [KEY, bq_mini.catalog.table(NAME).columns[-1].name, PAIR_COLUMN]


def test_a_job_running_past_the_poll_timeout_is_polled_not_inserted_again(
    bq_mini: BigQueryMini,
) -> None:
    """The job reports RUNNING for 2 s, polls time out after 0.3 s: exactly one jobs.insert,
    the job polled by id (jobs.get) until done, the rows those of the table, its folder named
    by the job id, emptied afterwards; nothing cancelled."""
    slow = SlowJobs(seconds=2.0)
    with HttpAnswerProxy(
        bq_mini.emulator.rest_endpoint, before=[slow.duplicate], after=[slow]
    ) as proxy:
        wh = bq_mini.warehouse(api_endpoint=proxy.endpoint, poll_timeout_s=0.3)
        cut = Cut(datetime.now(UTC))
        try:
            result = wh.export_table(bq_mini.features, NAME, _wanted(bq_mini), STAGING, cut=cut)
        finally:
            wh.close()
        inserts = _extract_inserts(proxy)
        job_id = export_job_id(bq_mini.emulator.project, bq_mini.features, NAME, cut)
        assert inserts == [job_id]
        polls = [e for e in proxy.sent("GET", f"/jobs/{job_id}") if e.method == "GET"]
        assert len(polls) >= 3
        destination = proxy.sent("POST", "/jobs")[-1].json()["configuration"]["extract"]
        assert destination["destinationUris"] == [
            f"{STAGING}/{bq_mini.features}.{NAME}/{job_id}/*.parquet"
        ]
    assert result.data.equals(bq_mini.rows[NAME].select(_wanted(bq_mini)))
    assert result.bytes_read == 0
    assert slow.cancelled == []
    assert _staged(bq_mini) == []


def test_the_same_export_again_finds_its_job_and_a_finished_one_is_followed_by_the_next(
    bq_mini: BigQueryMini,
) -> None:
    """The job id is derived from the table and the cut: the same export again is answered 409
    (the job exists) and polls it; its files were read and deleted already, so the next id of
    the sequence exports anew. Another cut is another job."""
    jobs = SlowJobs(seconds=0.0)
    cut = Cut(datetime(2024, 2, 1, tzinfo=UTC))
    with HttpAnswerProxy(
        bq_mini.emulator.rest_endpoint, before=[jobs.duplicate], after=[jobs]
    ) as proxy:
        wh = bq_mini.warehouse(api_endpoint=proxy.endpoint)
        try:
            first = wh.export_table(bq_mini.features, NAME, _wanted(bq_mini), STAGING, cut=cut)
            again = wh.export_table(bq_mini.features, NAME, _wanted(bq_mini), STAGING, cut=cut)
            later = Cut(cut.at + timedelta(hours=1))
            wh.export_table(bq_mini.features, NAME, _wanted(bq_mini), STAGING, cut=later)
        finally:
            wh.close()
        base = export_job_id(bq_mini.emulator.project, bq_mini.features, NAME, cut)
        other = export_job_id(bq_mini.emulator.project, bq_mini.features, NAME, later)
        assert _extract_inserts(proxy) == [base, base, f"{base}_r2", other]
    assert other != base
    # The cut is in the future of every row: all rows, both times.
    assert first.data.equals(again.data)
    assert first.data.equals(bq_mini.rows[NAME].select(_wanted(bq_mini)))


def test_an_export_of_a_cut_keeps_the_rows_at_or_before_it(bq_mini: BigQueryMini) -> None:
    rows = bq_mini.rows[NAME]
    at = rows[KEY][rows.num_rows // 2].as_py()
    wh = bq_mini.warehouse()
    try:
        result = wh.export_table(bq_mini.features, NAME, [KEY], STAGING, cut=Cut(at))
    finally:
        wh.close()
    kept = rows.select([KEY]).filter(
        pa.compute.less_equal(rows[KEY], pa.scalar(at, rows[KEY].type))
    )
    assert result.data.equals(kept)


def test_the_daily_export_quota_is_one_clear_error_not_retried(bq_mini: BigQueryMini) -> None:
    """A `quotaExceeded` refusal of the extract job: one jobs.insert, one error naming the
    table and the quota, no files."""
    with HttpAnswerProxy(bq_mini.emulator.rest_endpoint, before=[extract_quota_refused]) as proxy:
        wh = bq_mini.warehouse(api_endpoint=proxy.endpoint)
        try:
            with pytest.raises(ExportQuotaError) as err:
                wh.export_table(bq_mini.features, NAME, [KEY], STAGING)
            assert wh.retries == 0
        finally:
            wh.close()
        assert len(_extract_inserts(proxy)) == 1
        assert not proxy.sent("POST", "/cancel")  # no job was created
    message = str(err.value)
    assert message.startswith(f"{bq_mini.features}.{NAME}: BigQuery refused the extract job")
    assert "extract bytes per day" in message and "not retried" in message
    assert isinstance(err.value, WarehouseError)
    assert _staged(bq_mini) == []
