"""Step usage, the Cloud Run cost estimate and the cost report's lines and totals; each step's
own peak memory when several run in one process."""

import hashlib

import pytest

from bqx_assets.core.costs import (
    METADATA_KEYS,
    Container,
    CostLine,
    Prices,
    StepUsage,
    Usage,
    estimate,
    format_report,
    total,
)
from bqx_assets.core.metrics import peak_rss_bytes
from bqx_assets_tests.builders import hold_memory


def test_estimate_prices_the_container_for_its_wall_time_plus_bytes_read() -> None:
    prices = Prices(vcpu_second=0.00001, gib_second=0.000001, storage_read_tib=5.0)
    cloud_run, bigquery = estimate(1000.0, 2**40 // 2, prices, Container(vcpus=2, memory_gib=4))
    assert cloud_run == pytest.approx(1000 * (2 * 0.00001 + 4 * 0.000001))
    assert bigquery == pytest.approx(2.5)


def test_default_prices_put_a_96_minute_pair_near_the_first_teams_bill() -> None:
    # The first team paid $0.60-0.71 per pair for 77-96 min on Cloud Run (4 vCPU, 16 GiB).
    cloud_run, _ = estimate(96 * 60, 0, container=Container(vcpus=4, memory_gib=16))
    assert 0.4 < cloud_run < 0.8
    # The job now runs at 2 vCPU / 4 GiB: the same time costs 0.44/1.04 (42%) of that.
    assert estimate(96 * 60, 0)[0] == pytest.approx(cloud_run * 0.44 / 1.04)


def test_storage_read_bytes_are_priced_at_the_data_extraction_rate() -> None:
    # $1.10 per TiB read (BigQuery "Data extraction pricing"), not the $6.25 query rate: a
    # pair's ~12 GB of checkpoints read from the warehouse costs about 1.2 cents.
    _, bigquery = estimate(0.0, 12 * 10**9)
    assert bigquery == pytest.approx(12e9 / 2**40 * 1.10)
    assert Prices().storage_read_free_tib_per_month == 300.0


def test_step_usage_measures_cpu_wall_memory_and_bytes() -> None:
    with StepUsage(container=Container(vcpus=1, memory_gib=1)) as usage:
        digest = b""
        for _ in range(20_000):
            digest = hashlib.sha256(digest).digest()  # some CPU to measure
        usage.add_bytes_read(3 * 2**30)
    measured = usage.finish()
    assert measured.wall_seconds > 0
    assert measured.cpu_seconds > 0
    assert measured.peak_rss_bytes > 10 * 2**20
    assert measured.bytes_read == 3 * 2**30
    assert measured.bigquery_usd == pytest.approx(3 / 1024 * 1.10)
    assert usage.finish() is measured  # fixed once finished
    metadata = usage.metadata()
    assert tuple(metadata) == METADATA_KEYS
    assert metadata["step_estimated_cost_usd"] == pytest.approx(
        measured.cloud_run_usd + measured.bigquery_usd, abs=1e-6
    )
    assert Usage.from_metadata(metadata) == Usage(
        cpu_seconds=metadata["step_cpu_seconds"],
        peak_rss_bytes=metadata["step_peak_rss_bytes"],
        wall_seconds=metadata["step_wall_seconds"],
        bytes_read=metadata["step_bytes_read"],
        query_bytes_billed=metadata["step_query_bytes_billed"],
        cloud_run_usd=metadata["step_cloud_run_usd"],
        bigquery_usd=metadata["step_bigquery_usd"],
    )


def test_queries_billed_bytes_are_priced_at_the_on_demand_rate_beside_the_reads() -> None:
    # A pair step's partition look-ups: 2 datasets, BigQuery's 10 MB minimum each
    # ("On-demand compute pricing", $6.25 per TiB), beside 12 GB read at $1.10 per TiB.
    billed = 2 * 10 * 2**20
    with StepUsage() as usage:
        usage.add_bytes_read(12 * 10**9)
        usage.add_query_bytes_billed(billed)
    measured = usage.finish()
    assert measured.query_bytes_billed == billed
    assert measured.bigquery_usd == pytest.approx((12e9 * 1.10 + billed * 6.25) / 2**40)
    recorded = Usage.from_metadata(usage.metadata())
    assert recorded is not None and recorded.query_bytes_billed == billed
    # Priced again (as `bqx costs` prices recorded runs) and summed, the queries stay counted.
    both = recorded.priced() + recorded.priced()
    assert both.query_bytes_billed == 2 * billed
    assert both.bigquery_usd == pytest.approx(2 * measured.bigquery_usd, rel=1e-4)


def test_steps_run_one_after_another_in_one_process_each_report_their_own_peak() -> None:
    """`bqx demo` runs every step in its one process: the step that held 300 MiB and the one
    that held 30 MiB report different peaks, not both the process's (issue 29)."""
    with StepUsage() as first:
        hold_memory(300 * 2**20)
    with StepUsage() as second:
        hold_memory(30 * 2**20)
    if not (first.own_peak and second.own_peak):
        pytest.skip("this kernel refuses to reset the peak (/proc/self/clear_refs)")
    large, small = first.finish().peak_rss_bytes, second.finish().peak_rss_bytes
    assert large - small > 200 * 2**20
    assert small > 10 * 2**20  # what the process held when the step started counts
    assert first.metadata()["step_peak_rss_bytes"] == large
    assert peak_rss_bytes() >= large


def test_finish_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        StepUsage().finish()


def test_totals_add_time_and_cost_and_keep_the_peak() -> None:
    a = CostLine("eurusd", 2, Usage(10, 2**30, 60, 100, 0.01, 0.001))
    b = CostLine("gbpusd", 2, Usage(5, 3 * 2**30, 30, 50, 0.02, 0.002))
    summed = total([a, b])
    assert summed.steps == 4
    assert summed.usage.cpu_seconds == 15 and summed.usage.wall_seconds == 90
    assert summed.usage.peak_rss_bytes == 3 * 2**30
    assert summed.usage.estimated_cost_usd == pytest.approx(0.033)
    report = format_report([a, b])
    assert report.splitlines()[-1].startswith("total")
    assert "eurusd" in report and "gbpusd" in report
