"""Two pairs materialized through Dagster: file contents, shared checkpoints written once."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.extraction import expected_schema
from bqx_assets.core.gate.validation import CHECK_NAMES
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import CheckpointStore, EmbeddedWarehouseResource, PipelineSettings


def resources(root: Path, catalog_path: Path, warehouse: Path) -> dict[str, object]:
    return {
        "warehouse": EmbeddedWarehouseResource(path=str(warehouse)),
        "checkpoints": CheckpointStore(root=str(root / "ckpt"), cache_dir=str(root / "cache")),
        "settings": PipelineSettings(
            catalog_path=str(catalog_path), workdir=str(root / "work"), min_rows=100
        ),
        "training_io_manager": TrainingFileIOManager(output_root=str(root / "out")),
    }


@pytest.fixture(scope="module")
def materialized(
    tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> dict[str, object]:
    catalog, catalog_path = mini
    root = tmp_path_factory.mktemp("pipeline")
    res = resources(root, catalog_path, mini_warehouse)
    instance = dg.DagsterInstance.ephemeral()
    shared = dg.materialize([shared_checkpoints], resources=res, instance=instance)
    assert shared.success
    cov = root / "ckpt" / "shared" / "cov_agg_eurusd_gbpusd"
    mtimes = []
    runs = {}
    for pair in catalog.pairs:
        runs[pair] = dg.materialize(
            [pair_checkpoints, training_file], partition_key=pair, resources=res, instance=instance
        )
        mtimes.append(sorted(f.stat().st_mtime_ns for f in cov.glob("*.parquet")))
    return {"root": root, "instance": instance, "runs": runs, "cov_mtimes": mtimes}


def test_each_pair_has_a_published_training_file_of_the_expected_shape(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    catalog, _ = mini
    for pair in catalog.pairs:
        assert materialized["runs"][pair].success
        path = materialized["root"] / "out" / f"training_{pair}.parquet"
        meta = pq.read_metadata(path)
        assert meta.num_rows == 600
        assert tuple(meta.schema.to_arrow_schema().names) == catalog.training_columns(pair)
        assert "base_bqx__target_45" not in meta.schema.to_arrow_schema().names  # leak kept out
    assert not list((materialized["root"] / "out").glob("quarantine/*"))


def test_training_file_holds_the_source_values(
    materialized: dict, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog, _ = mini
    wh = EmbeddedWarehouse(mini_warehouse)
    data = pq.read_table(materialized["root"] / "out" / "training_eurusd.parquet")
    targets = catalog.targets["eurusd"]
    spine = wh.read(targets.dataset, targets.name, ["interval_time", *targets.targets], DateRange())
    assert data.column("interval_time").equals(spine.data.column("interval_time"))
    assert data.column("target_bqx720_h60").equals(spine.data.column("target_bqx720_h60"))
    # An ETF table that starts late: nulls first, then its values on the matching keys.
    corr = catalog.table("corr_etf_idx_eurusd_spy")
    source = wh.read(corr.dataset, corr.name, expected_schema(corr).names, DateRange()).data
    merged = data.column("corr_etf_idx_spy__corr_mean_45")
    late = 600 - source.num_rows
    assert late > 0 and merged.slice(0, late).null_count == late
    assert merged.slice(late).equals(source.column("corr_mean_45"))
    # A shared table runs past the spine: its extra minutes are dropped, not appended.
    tri = data.column("tri_agg_bqx_eur_usd_gbp__currency1")
    assert pc.all(pc.equal(tri, "eur")).as_py()
    # Dtypes survive: bool, int64, string.
    schema = data.schema
    assert schema.field("div_bqx__div_short_leading").type == pa.bool_()
    assert schema.field("mkt_sentiment__risk_sentiment").type == pa.string()
    counts = [c.name for c in catalog.table("agg_eurusd").columns if c.dtype == "INT64"]
    assert counts and all(schema.field(f"agg__{c}").type == pa.int64() for c in counts)


def test_shared_checkpoints_are_written_once_for_both_pairs(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    first, second = materialized["cov_mtimes"]
    assert first == second  # gbpusd reused the cov table eurusd wrote
    gbpusd = materialized["runs"]["gbpusd"]
    cov = gbpusd.asset_materializations_for_node("pair_checkpoints")
    meta = next(m.metadata for m in cov if m.asset_key == dg.AssetKey(["checkpoints", "cov"]))
    assert meta["reused"].value == 1 and meta["extracted"].value == 1
    assert meta["chunks_reused"].value >= 1 and meta["chunks_extracted"].value >= 1
    assert meta["bytes_read"].value > 0
    shared_dir = materialized["root"] / "ckpt" / "shared"
    assert len(list(shared_dir.glob("tri_*/*.parquet"))) >= 1
    assert not (materialized["root"] / "ckpt" / "gbpusd" / "tri_agg_bqx_eur_usd_gbp").exists()


def test_gate_checks_recorded_per_pair(materialized: dict, mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    for pair in catalog.pairs:
        evaluations = materialized["runs"][pair].get_asset_check_evaluations()
        assert {e.check_name: e.passed for e in evaluations} == dict.fromkeys(CHECK_NAMES, True)


def test_missing_checkpoints_fail_the_training_file_by_name(
    tmp_path: Path, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    _, catalog_path = mini
    res = resources(tmp_path, catalog_path, mini_warehouse)
    run = dg.materialize(
        [training_file], partition_key="eurusd", resources=res, raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert not run.success
    failure = run.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "pair eurusd: 15 of 15 tables have no verified checkpoint: agg_eurusd" in failure
    assert not (tmp_path / "out" / "training_eurusd.parquet").exists()


def test_a_changed_source_table_makes_its_checkpoint_stale(
    tmp_path: Path, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from bqx_assets.defs.assets import checkpoint_asset_key, pair_sources, warehouse_key

    catalog, catalog_path = mini
    shutil.copy(mini_warehouse, tmp_path / "w.duckdb")
    res = resources(tmp_path, catalog_path, tmp_path / "w.duckdb")
    instance = dg.DagsterInstance.ephemeral()
    observed = dg.AssetSelection.assets(warehouse_key("lag"), warehouse_key("agg"))
    defs = dg.Definitions(
        assets=[pair_sources, pair_checkpoints],
        jobs=[dg.define_asset_job("observe", observed)],
        resources=res,
    )
    graph = defs.resolve_asset_graph()

    def status(family: str) -> StaleStatus:
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        return resolver.get_status(checkpoint_asset_key(family), "eurusd")

    def observe() -> None:
        job = defs.resolve_job_def("observe")
        assert job.execute_in_process(instance=instance, partition_key="eurusd").success

    observe()
    run = dg.materialize(
        [pair_sources, pair_checkpoints], partition_key="eurusd", resources=res,
        instance=instance, selection=[checkpoint_asset_key("lag"), checkpoint_asset_key("agg")],
    )  # fmt: skip
    assert run.success
    assert status("lag") == StaleStatus.FRESH and status("agg") == StaleStatus.FRESH
    EmbeddedWarehouse(tmp_path / "w.duckdb", read_only=False).append_minutes(
        catalog.features_dataset, "lag_eurusd_45", 3
    )
    observe()
    assert status("lag") == StaleStatus.STALE
    assert status("agg") == StaleStatus.FRESH
