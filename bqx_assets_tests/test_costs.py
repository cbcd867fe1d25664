"""Step usage, the Cloud Run cost estimate, and `bqx costs` over an instance's latest runs."""

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from bqx_assets.cli.commands.costs import cost_lines
from bqx_assets.core.catalog import Catalog
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
from bqx_assets.core.metrics import STEP_PEAK_LOCAL_BYTES
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.partitions import pairs_partitions
from bqx_assets.defs.resources import CheckpointStore, EmbeddedWarehouseResource, PipelineSettings
from bqx_assets_tests.conftest import MINI_PAIRS
from bqx_assets_tests.test_refresh import DAY


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
        cloud_run_usd=metadata["step_cloud_run_usd"],
        bigquery_usd=metadata["step_bigquery_usd"],
    )


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


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _usage_metadata(wall: float, bytes_read: int) -> dict[str, float | int]:
    return Usage(
        cpu_seconds=wall / 2, peak_rss_bytes=2**30, wall_seconds=wall, bytes_read=bytes_read
    ).to_metadata()


def test_cost_lines_sum_each_pairs_latest_run_counting_a_multi_asset_step_once(
    instance: dg.DagsterInstance,
) -> None:
    @dg.multi_asset(
        specs=[dg.AssetSpec(["checkpoints", "agg"]), dg.AssetSpec(["checkpoints", "targets"])],
        partitions_def=pairs_partitions,
        name="pair_checkpoints",
    )
    def pair_checkpoints() -> Iterator[dg.MaterializeResult]:
        # Both families carry the same step usage; it must be counted once.
        for family in ("agg", "targets"):
            yield dg.MaterializeResult(
                asset_key=["checkpoints", family],
                metadata={"bytes_read": 2**30, **_usage_metadata(100.0, 2**31)},
            )

    @dg.asset(
        key="training_file",
        partitions_def=pairs_partitions,
        deps=[pair_checkpoints.keys_by_output_name["checkpoints__agg"]],
    )
    def training_file() -> dg.MaterializeResult:
        # A footprint measurement beside the usage: reported as recorded, the largest per line.
        return dg.MaterializeResult(
            metadata={**_usage_metadata(50.0, 0), STEP_PEAK_LOCAL_BYTES: 3 * 2**30}
        )

    @dg.asset(key=["checkpoints", "tri"])
    def shared() -> dg.MaterializeResult:
        # No recorded usage: the report falls back to the step's events and its bytes_read.
        return dg.MaterializeResult(metadata={"bytes_read": 2**40})

    for pair in ("eurusd", "gbpusd"):
        assert dg.materialize(
            [pair_checkpoints, training_file], instance=instance, partition_key=pair
        ).success
    assert dg.materialize([shared], instance=instance).success

    prices = Prices(vcpu_second=0.001, gib_second=0.0, storage_read_tib=1.0)
    lines = {
        line.name: line
        for line in cost_lines(instance, None, prices=prices, container=Container(1, 1))
    }
    assert sorted(lines) == ["eurusd", "gbpusd", "shared"]
    pair = lines["eurusd"]
    assert pair.steps == 2
    assert pair.usage.wall_seconds == pytest.approx(150.0)
    assert pair.usage.cpu_seconds == pytest.approx(75.0)
    assert pair.usage.bytes_read == 2**31
    assert pair.usage.cloud_run_usd == pytest.approx(0.15)
    assert pair.usage.bigquery_usd == pytest.approx(2 / 1024)
    shared_line = lines["shared"]
    assert shared_line.steps == 1 and shared_line.usage.bytes_read == 2**40
    assert shared_line.usage.bigquery_usd == pytest.approx(1.0)
    assert shared_line.usage.wall_seconds > 0
    assert pair.footprint == {STEP_PEAK_LOCAL_BYTES: 3 * 2**30}
    assert shared_line.footprint == {}
    report = format_report(list(lines.values())).splitlines()
    assert "peak_local_GiB" in report[0]
    assert report[-1].split()[-1] == "3.00"  # the total keeps the largest footprint
    only = cost_lines(instance, ["gbpusd"], shared=False)
    assert [line.name for line in only] == ["gbpusd"]
    json.dumps([line.to_dict() for line in only])  # what `bqx costs` emits


def test_bqx_costs_prints_a_table_and_one_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bqx_assets.cli import main

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["costs"]) == 1  # nothing built yet
    capsys.readouterr()

    @dg.asset(key="training_file", partitions_def=pairs_partitions)
    def training_file() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=_usage_metadata(30.0, 2**30))

    with dg.DagsterInstance.get() as instance:
        assert dg.materialize([training_file], instance=instance, partition_key="usdjpy").success
    assert main(["costs", "--pairs", "usdjpy,eurusd", "--vcpus", "2", "--memory-gib", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("prices:") and "2 vCPU, 4 GiB" in out[0]
    assert any(line.startswith("usdjpy") for line in out)
    summary = json.loads(out[-1])
    assert [line["name"] for line in summary["lines"]] == ["usdjpy"]
    assert summary["total"]["wall_seconds"] == pytest.approx(30.0)
    assert summary["container"] == {"vcpus": 2.0, "memory_gib": 4.0}


def test_pipeline_settings_default_to_the_cores_prices_and_gate() -> None:
    from bqx_assets.core.gate.validation import Thresholds
    from bqx_assets.defs.resources import PipelineSettings

    settings = PipelineSettings()
    assert settings.bq_price_per_tib == Prices().storage_read_tib
    assert settings.thresholds() == Thresholds()


def test_bqx_costs_shows_each_pairs_refresh_beside_its_full_build(
    mini: tuple[Catalog, Path], tmp_path: Path
) -> None:
    """Both mini pairs and the shared tables built through Dagster from scratch, one trading
    day appended, every pair refreshed: per pair, the refresh reads fewer bytes, extracts fewer
    chunks and costs less than the full build it is shown beside.

    At this size a step's wall time is mostly the merge's, Dagster's and the shared machine's,
    so the total cost is compared at Storage Read prices alone (production's builds are
    extraction-bound: bench/refresh.py measures their times). The days are inside one month:
    at a month's end the spine's month is read again whole (the append rewrites the targets'
    look-ahead tail of the day before, so its day chunks cannot be compacted), which in this
    catalog of few feature tables is most of the bytes a refresh reads."""
    catalog, catalog_path = mini
    path = tmp_path / "w.duckdb"
    monday = datetime(2024, 2, 5, tzinfo=UTC)
    create_warehouse(path, catalog, pairs=MINI_PAIRS, rows=3 * DAY, start=monday).close()
    res = {
        "warehouse": EmbeddedWarehouseResource(path=str(path)),
        "checkpoints": CheckpointStore(
            root=str(tmp_path / "ckpt"), cache_dir=str(tmp_path / "cache")
        ),
        "settings": PipelineSettings(
            catalog_path=str(catalog_path), workdir=str(tmp_path / "work"), min_rows=100
        ),
        "training_io_manager": TrainingFileIOManager(output_root=str(tmp_path / "out")),
    }

    def build_all(instance: dg.DagsterInstance) -> None:
        assert dg.materialize([shared_checkpoints], resources=res, instance=instance).success
        for pair in MINI_PAIRS:
            assert dg.materialize(
                [pair_checkpoints, training_file],
                partition_key=pair,
                resources=res,
                instance=instance,
            ).success

    with dg.instance_for_test() as instance:
        build_all(instance)
        # The only connection to the file while it grows (each step closed its own).
        grown = EmbeddedWarehouse(path, read_only=False)
        try:
            grown.append(DAY)
        finally:
            grown.close()
        build_all(instance)
        lines = cost_lines(instance, list(MINI_PAIRS))
        bytes_only = Prices(vcpu_second=0.0, gib_second=0.0)
        priced = {(x.name, x.latest): x for x in cost_lines(instance, None, prices=bytes_only)}

    by = {(line.name, line.latest): line for line in lines}
    assert sorted(by) == sorted(
        (n, latest) for n in (*MINI_PAIRS, "shared") for latest in (True, False)
    )
    for name in (*MINI_PAIRS, "shared"):
        refresh, full = by[(name, True)], by[(name, False)]
        assert refresh.build == "refresh" and not refresh.full and full.full, name
        assert refresh.run_id != full.run_id
        assert 0 < refresh.usage.bytes_read < full.usage.bytes_read / 2, name
        assert refresh.chunks.extracted < full.chunks.extracted, name
        assert refresh.chunks.reused + refresh.chunks.compacted > 0, name
        assert (full.chunks.reused == 0) == (full.build == "full"), name
        assert refresh.usage.bigquery_usd < full.usage.bigquery_usd, name
        cost = {latest: priced[(name, latest)].usage.estimated_cost_usd for latest in (1, 0)}
        assert 0 < cost[True] < cost[False], name
    # eurusd wrote the cov table both pairs use: its build is full, gbpusd's first one reused it.
    assert by[("eurusd", False)].build == "full"
    assert by[("gbpusd", False)].build == "first"
    report = format_report(lines).splitlines()
    assert [r.split()[0] for r in report[2:]] == [
        "eurusd", "eurusd", "gbpusd", "gbpusd", "shared", "shared", "total", "total",
    ]  # fmt: skip
    assert report[-1].startswith("total full")
    print("\n".join(report))
