"""IO managers materialized with tiny assets into temporary folders and into the GCS emulator."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from bqx_assets.core.publish import TrainingFile
from bqx_assets.core.storage import ObjectStorage, file_crc32c, open_storage
from bqx_assets.defs.frames import FrameIOManager
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets_tests.emulators import gcs as gcs_fixtures

# Fixtures made visible to this module (a plain import would be shadowed by the arguments).
gcs_emulator = gcs_fixtures.gcs_emulator
gcs_bucket = gcs_fixtures.gcs_bucket

PAIRS = dg.StaticPartitionsDefinition(["eurusd", "gbpusd"])


def _frame(rows: int, offset: float = 0.0) -> pl.DataFrame:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "interval_time": pl.datetime_range(
                start, start.replace(hour=rows - 1), "1h", eager=True, time_unit="us"
            ),
            "target_bqx45_h15": [offset + i / 10 for i in range(rows)],
            "agg_bqx__agg_mean_45": [offset - i for i in range(rows)],
        }
    )


def _assets(workdir: Path, *, passed: bool = True, offset: float = 0.0) -> list[Any]:
    """A producer handing over a finished local file, and a consumer scanning it lazily."""

    @dg.asset(partitions_def=PAIRS, io_manager_key="training_io_manager")
    def training_file(context: dg.AssetExecutionContext) -> TrainingFile:
        pair = context.partition_key
        local = workdir / "merge" / f"training_{pair}.parquet"
        local.parent.mkdir(parents=True, exist_ok=True)
        _frame(5, offset).write_parquet(local)
        report = None if passed else {"row_count": {"actual": 5, "expected": 177_748}}
        return TrainingFile(pair=pair, local_path=local, passed=passed, report=report)

    @dg.asset(partitions_def=PAIRS, io_manager_key="frame_io_manager")
    def training_sample(training_file: pl.LazyFrame) -> pl.DataFrame:
        assert isinstance(training_file, pl.LazyFrame)
        return training_file.filter(pl.col("target_bqx45_h15") > offset + 0.15).collect()

    return [training_file, training_sample]


def _resources(output_root: str, workdir: Path) -> dict[str, Any]:
    return {
        "training_io_manager": TrainingFileIOManager(
            output_root=output_root, cache_dir=str(workdir / "cache")
        ),
        "frame_io_manager": FrameIOManager(base_dir=str(workdir / "frames")),
    }


def _materialize(
    workdir: Path, output_root: str, *, partition: str = "eurusd", **kwargs: Any
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        _assets(workdir, **kwargs),
        resources=_resources(output_root, workdir),
        partition_key=partition,
    )


def _published_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node("training_file")
    return {k: v.value for k, v in mat.metadata.items()}


def _sample(workdir: Path, pair: str) -> pl.DataFrame:
    return pl.read_parquet(workdir / "frames" / "training_sample" / f"{pair}.parquet")


def test_training_file_to_a_local_root(tmp_path: Path) -> None:
    output = tmp_path / "output"
    result = _materialize(tmp_path, str(output))
    assert result.success

    published = output / "training_eurusd.parquet"
    assert pl.read_parquet(published).equals(_frame(5))
    assert not (tmp_path / "merge" / "training_eurusd.parquet").exists()  # ephemeral copy gone
    meta = _published_metadata(result)
    assert meta["status"] == "published"
    assert meta["uri"] == str(published)
    assert meta["size_bytes"] == published.stat().st_size
    assert meta["crc32c"] == file_crc32c(published)
    assert meta["upload_seconds"] >= 0 and meta["upload_mb_per_s"] >= 0
    assert _sample(tmp_path, "eurusd")["target_bqx45_h15"].to_list() == [0.2, 0.3, 0.4]


@pytest.mark.emulator
def test_training_file_to_gcs(gcs_bucket: str, tmp_path: Path) -> None:
    root = f"gs://{gcs_bucket}/output"
    result = _materialize(tmp_path, root, partition="gbpusd")
    assert result.success

    storage = open_storage(root)
    info = storage.stat("training_gbpusd.parquet")
    assert info is not None
    meta = _published_metadata(result)
    assert meta["uri"] == f"{root}/training_gbpusd.parquet"
    assert (meta["size_bytes"], meta["crc32c"], meta["generation"]) == (
        info.size,
        info.crc32c,
        info.generation,
    )
    assert meta["upload_seconds"] > 0 and meta["upload_mb_per_s"] > 0
    assert not (tmp_path / "merge" / "training_gbpusd.parquet").exists()
    # Loaded from a verified local copy of the object, not through Polars' gs:// reader.
    cached = tmp_path / "cache" / "training_gbpusd.parquet"
    assert file_crc32c(cached) == info.crc32c
    assert _sample(tmp_path, "gbpusd")["target_bqx45_h15"].to_list() == [0.2, 0.3, 0.4]


@pytest.mark.emulator
def test_failed_gate_is_quarantined_and_published_file_kept(
    gcs_bucket: str, tmp_path: Path
) -> None:
    root = f"gs://{gcs_bucket}/output"
    assert _materialize(tmp_path, root).success
    storage = open_storage(root)
    good = storage.stat("training_eurusd.parquet")
    good_bytes = storage.read_bytes("training_eurusd.parquet")

    result = dg.materialize(
        _assets(tmp_path, passed=False, offset=100.0)[:1],
        resources=_resources(root, tmp_path),
        partition_key="eurusd",
    )
    assert result.success
    meta = _published_metadata(result)
    assert meta["status"] == "quarantined"
    assert meta["uri"].startswith(f"{root}/quarantine/training_eurusd.")
    assert storage.stat("training_eurusd.parquet") == good
    assert storage.read_bytes("training_eurusd.parquet") == good_bytes
    report_key = meta["report_uri"].removeprefix(f"{root}/")
    assert json.loads(storage.read_bytes(report_key) or b"")["row_count"]["actual"] == 5
    quarantined = storage.get_file(
        meta["uri"].removeprefix(f"{root}/"), tmp_path / "quarantined.parquet"
    )
    assert pl.read_parquet(quarantined)["target_bqx45_h15"][0] == 100.0


def test_new_version_keeps_the_previous_one(tmp_path: Path) -> None:
    output = tmp_path / "output"
    assert _materialize(tmp_path, str(output)).success
    first = (output / "training_eurusd.parquet").read_bytes()
    result = _materialize(tmp_path, str(output), offset=1.0)
    assert result.success
    meta = _published_metadata(result)
    assert Path(meta["previous_version_uri"]).read_bytes() == first
    assert Path(meta["previous_version_uri"]).parent == output / "versions"
    assert pl.read_parquet(output / "training_eurusd.parquet").equals(_frame(5, 1.0))


def test_unpartitioned_training_file_names_its_pair(tmp_path: Path) -> None:
    local = tmp_path / "merge.parquet"
    _frame(3).write_parquet(local)

    @dg.asset(io_manager_key="training_io_manager", metadata={"pair": "usdjpy"})
    def training_file() -> TrainingFile:
        return TrainingFile(pair="usdjpy", local_path=local, passed=True)

    @dg.asset(io_manager_key="frame_io_manager")
    def rows(training_file: pl.LazyFrame) -> pl.DataFrame:
        return training_file.select(pl.len()).collect()

    result = dg.materialize(
        [training_file, rows], resources=_resources(str(tmp_path / "output"), tmp_path)
    )
    assert result.success
    assert pl.read_parquet(tmp_path / "frames" / "rows.parquet").item() == 3


def test_partition_and_pair_must_agree(tmp_path: Path) -> None:
    local = tmp_path / "merge.parquet"
    _frame(3).write_parquet(local)

    @dg.asset(partitions_def=PAIRS, io_manager_key="training_io_manager")
    def training_file() -> TrainingFile:
        return TrainingFile(pair="gbpusd", local_path=local, passed=True)

    result = dg.materialize(
        [training_file],
        resources=_resources(str(tmp_path / "output"), tmp_path),
        partition_key="eurusd",
        raise_on_error=False,
    )
    assert not result.success
    assert "partition eurusd returned the training file of gbpusd" in str(
        result.get_step_failure_events()[0].event_specific_data.error  # type: ignore[union-attr]
    )
    assert local.exists() and not (tmp_path / "output").exists()


def test_frame_io_manager_round_trip(tmp_path: Path) -> None:
    """dagster-polars 0.27.12 with the locked polars (<2): eager and lazy loads both work."""
    # dagster-polars passes scan_parquet(rechunk=, retries=), removed in polars 2.
    assert int(pl.__version__.split(".")[0]) < 2

    @dg.asset
    def frame() -> pl.DataFrame:
        return _frame(4)

    @dg.asset
    def eager(frame: pl.DataFrame) -> pl.DataFrame:
        assert isinstance(frame, pl.DataFrame)
        return frame.head(2)

    @dg.asset
    def lazy(frame: pl.LazyFrame) -> pl.DataFrame:
        assert isinstance(frame, pl.LazyFrame)
        return frame.tail(1).collect()

    result = dg.materialize(
        [frame, eager, lazy], resources={"io_manager": FrameIOManager(base_dir=str(tmp_path))}
    )
    assert result.success
    assert pl.read_parquet(tmp_path / "frame.parquet").equals(_frame(4))
    assert pl.read_parquet(tmp_path / "eager.parquet").equals(_frame(4).head(2))
    assert pl.read_parquet(tmp_path / "lazy.parquet").equals(_frame(4).tail(1))
    # The schema survives: interval_time stays timestamp[us, UTC].
    assert pl.read_parquet_schema(tmp_path / "frame.parquet")["interval_time"] == pl.Datetime(
        "us", "UTC"
    )


def test_frame_io_manager_refuses_a_remote_root() -> None:
    @dg.asset
    def frame() -> pl.DataFrame:
        return _frame(1)

    with pytest.raises(dg.DagsterInvariantViolationError, match="local folder"):
        dg.materialize([frame], resources={"io_manager": FrameIOManager(base_dir="gs://b/x")})


def test_consumer_of_every_pair_gets_a_dict_of_lazy_frames(tmp_path: Path) -> None:
    producer, _ = _assets(tmp_path)

    @dg.asset(io_manager_key="frame_io_manager")
    def row_counts(training_file: dict[str, pl.LazyFrame]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "pair": list(training_file),
                "rows": [lf.select(pl.len()).collect().item() for lf in training_file.values()],
            }
        )

    resources = _resources(str(tmp_path / "output"), tmp_path)
    for pair in PAIRS.get_partition_keys():
        assert dg.materialize([producer], resources=resources, partition_key=pair).success
    result = dg.materialize([producer, row_counts], resources=resources, selection=[row_counts])
    assert result.success
    counts = pl.read_parquet(tmp_path / "frames" / "row_counts.parquet")
    assert counts.sort("pair").to_dicts() == [
        {"pair": "eurusd", "rows": 5},
        {"pair": "gbpusd", "rows": 5},
    ]


@pytest.fixture(scope="module")
def every_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """eurusd's catalog cut to its first table of every family, its file and a warehouse."""
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.warehouse.embedded import create_warehouse

    full = Catalog.load().subset(["eurusd"])
    first: dict[str, Any] = {}
    for table in full.tables_for("eurusd"):
        first.setdefault(table.family, table)
    catalog = Catalog(
        full.project, full.features_dataset, full.targets_dataset, full.pairs,
        {t.name: t for t in first.values()}, full.targets, full.excluded,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("every_family")
    path = catalog.dump(root / "catalog.json")
    warehouse = root / "warehouse.duckdb"
    create_warehouse(warehouse, catalog, pairs=["eurusd"], rows=1500).close()
    return catalog, path, warehouse


def _build_pair(
    every_family: tuple[Any, Path, Path], checkpoint_root: str, output_root: str, local: Path
) -> dg.ExecuteInProcessResult:
    """Shared checkpoints, then eurusd's checkpoints and training file, through the real assets."""
    from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints
    from bqx_assets.defs.assets import training_file as training_file_asset
    from bqx_assets.defs.resources import (
        CheckpointStore,
        EmbeddedWarehouseResource,
        PipelineSettings,
    )

    _, catalog_path, warehouse = every_family
    resources = {
        "warehouse": EmbeddedWarehouseResource(path=str(warehouse)),
        "checkpoints": CheckpointStore(
            root=checkpoint_root, cache_dir=str(local / "cache" / "checkpoints")
        ),
        "settings": PipelineSettings(
            catalog_path=str(catalog_path), min_rows=100, workdir=str(local / "work")
        ),
        "training_io_manager": TrainingFileIOManager(
            output_root=output_root, cache_dir=str(local / "cache" / "output")
        ),
    }
    shared = dg.materialize([shared_checkpoints], resources=resources)
    assert shared.success
    # The gate's verdict on the synthetic data is not what this is about: a file that fails it
    # is quarantined instead of published, through the same streamed upload.
    pair = dg.materialize(
        [pair_checkpoints, training_file_asset],
        resources=resources,
        partition_key="eurusd",
        raise_on_error=False,
    )
    assert pair.is_node_success("pair_checkpoints")
    assert pair.asset_materializations_for_node("training_file")
    return pair


@pytest.mark.emulator
def test_whole_pair_with_both_roots_in_gcs(
    gcs_emulator: gcs_fixtures.GCSEmulator,
    every_family: tuple[Any, Path, Path],
    tmp_path: Path,
) -> None:
    """The real graph for one pair: checkpoints in a staging bucket, read in place by the merge,
    the training file streamed to the output bucket; nothing on local disk at any point, and the
    file equals, column by column, the one built from local roots on the same warehouse."""
    import pyarrow.parquet as pq

    from bqx_assets.core.metrics import STEP_FOOTPRINT_BYTES, STEP_PEAK_LOCAL_BYTES

    catalog = every_family[0]
    staging, output = gcs_emulator.create_bucket(), gcs_emulator.create_bucket()
    pair = _build_pair(every_family, f"gs://{staging}/checkpoints", f"gs://{output}", tmp_path)

    checkpoints = open_storage(f"gs://{staging}/checkpoints")
    stored = set(checkpoints.list())
    for table in catalog.tables_for("eurusd"):
        # A chunked checkpoint: `{owner}/{table}/{first day}_{last day}.parquet` + manifest.
        mine = [key for key in stored if f"/{table.name}/" in key]
        assert any(key.endswith(".parquet") for key in mine), table.name
        assert any(key.endswith(".manifest.json") for key in mine), table.name
    outputs = open_storage(f"gs://{output}")
    meta = _published_metadata(pair)
    key = meta["uri"].removeprefix(f"gs://{output}/")  # published, or quarantined by the gate
    published = outputs.stat(key)
    assert published is not None
    assert (meta["crc32c"], meta["size_bytes"]) == (published.crc32c, published.size)
    # No local copy of a checkpoint or of the training file was ever made.
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    names = [b.name for b in gcs_emulator.client().list_blobs(output)]
    assert not [n for n in names if n.endswith(".tmp")]  # the temporary object was deleted
    assert meta[STEP_FOOTPRINT_BYTES] == meta["step_peak_rss_bytes"] + meta[STEP_PEAK_LOCAL_BYTES]

    local = tmp_path.parent / f"{tmp_path.name}-local"
    built = _build_pair(
        every_family, str(local / "checkpoints"), str(local / "out"), local / "scratch"
    )
    assert _published_metadata(built)["status"] == meta["status"]
    expected = pq.read_table(_published_metadata(built)["uri"])
    assert isinstance(outputs, ObjectStorage)
    from_gcs = outputs.open_stored(key, size=published.size, crc32c=published.crc32c)
    got = pq.ParquetFile(from_gcs.open()).read()
    assert got.column_names == expected.column_names
    for name in expected.column_names:
        assert got.column(name).equals(expected.column(name)), name
