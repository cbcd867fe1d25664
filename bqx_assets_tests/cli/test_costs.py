"""`bqx costs`: each pair's latest run (and shared checkpoints') summed from an instance's step
statistics, priced, beside its latest full build."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from bqx_assets.cli import main
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.costs import Container, Prices, Usage, format_report
from bqx_assets.core.metrics import STEP_PEAK_LOCAL_BYTES
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.costs import cost_lines
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.partitions import pairs_partitions
from bqx_assets.defs.resources import CheckpointStore, EmbeddedWarehouseResource, PipelineSettings
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses

DAY = 1440
"""Minutes (rows) in a day."""


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
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


def test_a_refresh_is_shown_above_the_latest_full_build_else_the_first(
    instance: dg.DagsterInstance,
) -> None:
    """Recorded runs of a pair: a first build that reused a chunk (another pair's), a full
    build, two refreshes. The latest refresh is shown above the full build; with no full build
    among the runs, above the first."""
    runs: list[tuple[float, dict[str, int]]] = []

    @dg.asset(key="training_file", partitions_def=pairs_partitions)
    def training_file() -> dg.MaterializeResult:
        wall, chunks = runs[-1]
        counts = {f"chunks_{state}": n for state, n in chunks.items()}
        return dg.MaterializeResult(metadata={**_usage_metadata(wall, 0), **counts})

    def record(pair: str, wall: float, **chunks: int) -> str:
        runs.append((wall, chunks))
        done = dg.materialize([training_file], instance=instance, partition_key=pair)
        assert done.success
        return done.run_id

    first = record("eurusd", 10, extracted=5, reused=1)
    full = record("eurusd", 20, extracted=6)
    record("eurusd", 3, extracted=1, reused=5)
    latest = record("eurusd", 2, reused=5, compacted=1)
    only_first = record("gbpusd", 10, extracted=5, reused=1)
    gbpusd_latest = record("gbpusd", 1, extracted=1, reused=5)
    lines = cost_lines(instance, ["eurusd", "gbpusd", "usdjpy"], shared=False)
    shown = [(x.name, x.run_id, x.build, x.latest, x.full, x.usage.wall_seconds) for x in lines]
    assert shown == [
        ("eurusd", latest, "refresh", True, False, 2.0),
        ("eurusd", full, "full", False, True, 20.0),
        ("gbpusd", gbpusd_latest, "refresh", True, False, 1.0),
        ("gbpusd", only_first, "first", False, True, 10.0),
    ]  # usdjpy: never built, no line
    assert first not in {x.run_id for x in lines}
    report = format_report(lines).splitlines()
    assert report[-1].startswith("total full")


def test_bqx_costs_prints_a_table_and_one_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_bqx_costs_refuses_an_unknown_pair_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["costs", "--pairs", "eurusd,xyzabc"]) == 1
    assert "xyzabc" in capsys.readouterr().err


@pytest.mark.slow
def test_bqx_costs_shows_each_pairs_refresh_beside_its_full_build(
    mini: tuple[Catalog, Path], warehouses: Warehouses, tmp_path: Path
) -> None:
    """Both mini pairs and the shared tables built through Dagster from scratch, one trading
    day appended, every pair refreshed: per pair, the refresh reads fewer bytes, extracts fewer
    chunks and costs less than the full build it is shown beside.

    At this size a step's wall time is mostly the merge's, Dagster's and the shared machine's,
    so the total cost is compared at Storage Read prices alone (production's builds are
    extraction-bound: bench/refresh.py measures their times). The days are inside one month:
    at a month's end the spine's month is read again whole (the append rewrites the targets'
    look-ahead tail of the day before, so its day chunks cannot be compacted), which in this
    catalog of few feature tables is most of the bytes a refresh reads.

    Slow (six materializations of the real graph): the report's sums and its refresh-above-full
    lines are tested above on recorded runs; this is the report on real builds, whose chunk
    counts and bytes the refresh must bring down."""
    catalog, catalog_path = mini
    monday = datetime(2024, 2, 5, tzinfo=UTC)
    path = warehouses.copy(
        tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=3 * DAY, start=monday
    )
    res = {
        "warehouse": EmbeddedWarehouseResource(path=str(path)),
        "checkpoints": CheckpointStore(
            root=str(tmp_path / "ckpt"), cache_dir=str(tmp_path / "cache")
        ),
        "settings": PipelineSettings(
            catalog_path=str(catalog_path), workdir=str(tmp_path / "work"), gate={"min_rows": 100}
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

    with dg.DagsterInstance.ephemeral() as instance:
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
