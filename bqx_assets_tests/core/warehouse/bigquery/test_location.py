"""Where jobs run: each dataset's own location (datasets.get), through the emulator and a
proxy that answers as BigQuery where the emulator accepts any location."""

from __future__ import annotations

import pytest

from bqx_assets.core.errors import WarehouseError
from bqx_assets_tests.core.warehouse.conftest import BigQueryMini
from emulators.bigquery_answers import dataset_location
from emulators.bigquery_limits import jobs_only_in
from emulators.proxy import HttpAnswerProxy

pytestmark = pytest.mark.emulator

TABLES = ["agg_eurusd", "mkt_sentiment"]


def _job_locations(proxy: HttpAnswerProxy) -> list[str | None]:
    return [e.json()["jobReference"].get("location") for e in proxy.sent("POST", "/jobs")]


def test_with_no_location_configured_jobs_run_in_the_dataset_s(bq_mini: BigQueryMini) -> None:
    """Datasets in the US multi-region, jobs elsewhere answered 404 as BigQuery does: with no
    location configured, the dataset's is taken (datasets.get once) and every job names it."""
    features = bq_mini.features
    with HttpAnswerProxy(
        bq_mini.emulator.rest_endpoint,
        before=[jobs_only_in("US")],
        after=[dataset_location(features, "US")],
    ) as proxy:
        wh = bq_mini.warehouse(location=None, api_endpoint=proxy.endpoint)
        try:
            assert wh.location_of(features) == "US"
            for _ in range(2):
                states = wh.partition_states(features, TABLES)
                assert sorted(states) == TABLES
        finally:
            wh.close()
        gets = proxy.sent("GET", f"/datasets/{features}")
        assert len([e for e in gets if e.route.endswith(f"/datasets/{features}")]) == 1
    assert set(_job_locations(proxy)) == {"US"}


def test_a_configured_location_the_dataset_is_not_in_is_one_clear_error(
    bq_mini: BigQueryMini,
) -> None:
    """Configured us-central1, dataset in US: one error naming the dataset, its location and
    the configured one, before any job is sent (never "not found")."""
    features = bq_mini.features
    with HttpAnswerProxy(
        bq_mini.emulator.rest_endpoint,
        before=[jobs_only_in("US")],
        after=[dataset_location(features, "US")],
    ) as proxy:
        wh = bq_mini.warehouse(location="us-central1", api_endpoint=proxy.endpoint)
        try:
            with pytest.raises(WarehouseError) as err:
                wh.partition_states(features, TABLES)
        finally:
            wh.close()
        assert not proxy.sent("POST", "/jobs")
    message = str(err.value)
    assert message.startswith(f"dataset {bq_mini.emulator.project}.{features} is in location US")
    assert "configured for location us-central1" in message and "not found" not in message


def test_not_found_in_a_location_is_reported_as_a_location_mismatch(
    bq_mini: BigQueryMini,
) -> None:
    """BigQuery answers a job sent to the wrong location "Not found: Dataset ... was not found
    in location ...": reported as a location mismatch naming what was asked for, not as a
    missing table."""
    features = bq_mini.features
    with HttpAnswerProxy(
        bq_mini.emulator.rest_endpoint,
        before=[jobs_only_in("US")],
        after=[dataset_location(features, "us-central1")],
    ) as proxy:
        wh = bq_mini.warehouse(location="us-central1", api_endpoint=proxy.endpoint)
        try:
            with pytest.raises(WarehouseError, match="a location mismatch, not a missing") as err:
                wh.partition_states(features, TABLES)
        finally:
            wh.close()
        assert len(proxy.sent("POST", "/jobs")) == 1  # not retried
    assert f"{features}.INFORMATION_SCHEMA.PARTITIONS" in str(err.value)
    assert "was not found in location us-central1" in str(err.value)
