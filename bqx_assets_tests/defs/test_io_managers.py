"""The training file IO manager materialized with tiny assets into temporary folders and into the
GCS emulator; the real graph of one pair with both roots in GCS."""

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import TrainingFile
from bqx_assets.core.storage import file_crc32c, open_storage
from bqx_assets.defs.frames import FrameIOManager
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.metadata import recorded_usage
from bqx_assets_tests.conftest import Warehouses
from bqx_assets_tests.conftest import every_family as cut_to_every_family
from emulators.gcs import GCSEmulator

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


def _staged(manager: TrainingFileIOManager, pair: str, frame: pl.DataFrame) -> Any:
    """`frame` written, as the merge writes a training file, into a sink of the output root
    beside the pair's key, and committed (not published)."""
    data = io.BytesIO()
    frame.write_parquet(data)
    sink = manager.storage().stage(training_file_key(pair))
    sink.write(data.getvalue())
    return sink.commit()


def _assets(*, passed: bool = True, offset: float = 0.0) -> list[Any]:
    """A producer handing over a file committed in the output root, as `training_file` does,
    and a consumer scanning it lazily."""

    @dg.asset(partitions_def=PAIRS, io_manager_key="training_io_manager")
    def training_file(
        context: dg.AssetExecutionContext,
        training_io_manager: dg.ResourceParam[TrainingFileIOManager],
    ) -> TrainingFile:
        pair = context.partition_key
        staged = _staged(training_io_manager, pair, _frame(5, offset))
        report = None if passed else {"row_count": {"actual": 5, "expected": 177_748}}
        return TrainingFile(pair=pair, staged=staged, passed=passed, report=report)

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
        _assets(**kwargs),
        resources=_resources(output_root, workdir),
        partition_key=partition,
    )


def _published_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node("training_file")
    return {k: v.value for k, v in mat.metadata.items()}


def _sample(workdir: Path, pair: str) -> pl.DataFrame:
    return pl.read_parquet(workdir / "frames" / "training_sample" / f"{pair}.parquet")


def _temporaries(output_root: str) -> list[str]:
    """Temporary files (a sink's uncommitted or unpublished file) left in the root's top
    folder, where a training file's sink writes."""
    return list(open_storage(output_root).temporaries(""))


def test_training_file_to_a_local_root(tmp_path: Path) -> None:
    output = tmp_path / "output"
    result = _materialize(tmp_path, str(output))
    assert result.success

    published = output / "training_eurusd.parquet"
    assert pl.read_parquet(published).equals(_frame(5))
    assert _temporaries(str(output)) == []  # the committed file was renamed into place
    meta = _published_metadata(result)
    assert meta["status"] == "published"
    assert meta["dagster/uri"] == str(published)
    assert meta["crc32c"] == file_crc32c(published)
    assert meta["publish_seconds"] >= 0
    assert "generation" not in meta  # a local file has none
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
    assert meta["dagster/uri"] == f"{root}/training_gbpusd.parquet"
    assert (meta["crc32c"], meta["generation"]) == (info.crc32c, info.generation)
    assert meta["publish_seconds"] > 0
    assert _temporaries(root) == []  # the committed object was copied into place and deleted
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
        _assets(passed=False, offset=100.0)[:1],
        resources=_resources(root, tmp_path),
        partition_key="eurusd",
    )
    assert result.success
    meta = _published_metadata(result)
    assert meta["status"] == "quarantined"
    assert meta["dagster/uri"].startswith(f"{root}/quarantine/training_eurusd.")
    assert storage.stat("training_eurusd.parquet") == good
    assert storage.read_bytes("training_eurusd.parquet") == good_bytes
    report_key = meta["report"].removeprefix(f"{root}/")
    assert json.loads(storage.read_bytes(report_key) or b"")["row_count"]["actual"] == 5
    quarantined = storage.get_file(
        meta["dagster/uri"].removeprefix(f"{root}/"), tmp_path / "quarantined.parquet"
    )
    assert pl.read_parquet(quarantined)["target_bqx45_h15"][0] == 100.0
    assert _temporaries(root) == []


def test_new_version_keeps_the_previous_one(tmp_path: Path) -> None:
    output = tmp_path / "output"
    assert _materialize(tmp_path, str(output)).success
    first = (output / "training_eurusd.parquet").read_bytes()
    result = _materialize(tmp_path, str(output), offset=1.0)
    assert result.success
    meta = _published_metadata(result)
    assert Path(meta["previous_version"]).read_bytes() == first
    assert Path(meta["previous_version"]).parent == output / "versions"
    assert pl.read_parquet(output / "training_eurusd.parquet").equals(_frame(5, 1.0))


def test_unpartitioned_training_file_names_its_pair(tmp_path: Path) -> None:
    @dg.asset(io_manager_key="training_io_manager", metadata={"pair": "usdjpy"})
    def training_file(training_io_manager: dg.ResourceParam[TrainingFileIOManager]) -> TrainingFile:
        staged = _staged(training_io_manager, "usdjpy", _frame(3))
        return TrainingFile(pair="usdjpy", staged=staged, passed=True)

    @dg.asset(io_manager_key="frame_io_manager")
    def rows(training_file: pl.LazyFrame) -> pl.DataFrame:
        return training_file.select(pl.len()).collect()

    result = dg.materialize(
        [training_file, rows], resources=_resources(str(tmp_path / "output"), tmp_path)
    )
    assert result.success
    assert pl.read_parquet(tmp_path / "frames" / "rows.parquet").item() == 3


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return str(result.get_step_failure_events()[0].event_specific_data.error)  # type: ignore[union-attr]


def test_partition_and_pair_must_agree(tmp_path: Path) -> None:
    output = tmp_path / "output"
    (output / "training_gbpusd.parquet").parent.mkdir(parents=True)
    _frame(2).write_parquet(output / "training_gbpusd.parquet")
    before = (output / "training_gbpusd.parquet").read_bytes()

    @dg.asset(partitions_def=PAIRS, io_manager_key="training_io_manager")
    def training_file(training_io_manager: dg.ResourceParam[TrainingFileIOManager]) -> TrainingFile:
        staged = _staged(training_io_manager, "gbpusd", _frame(3))
        return TrainingFile(pair="gbpusd", staged=staged, passed=True)

    result = dg.materialize(
        [training_file],
        resources=_resources(str(output), tmp_path),
        partition_key="eurusd",
        raise_on_error=False,
    )
    assert not result.success
    assert "partition eurusd returned the training file of gbpusd" in _failure(result)
    # Neither pair's file published; the other pair's published file as it was; the refused
    # file's temporary gone.
    assert sorted(p.name for p in output.iterdir()) == ["training_gbpusd.parquet"]
    assert (output / "training_gbpusd.parquet").read_bytes() == before


def test_an_output_that_is_not_a_training_file_is_refused_by_type(tmp_path: Path) -> None:
    @dg.asset(io_manager_key="training_io_manager", metadata={"pair": "eurusd"})
    def training_file() -> pl.DataFrame:
        return _frame(3)

    output = tmp_path / "output"
    result = dg.materialize(
        [training_file], resources=_resources(str(output), tmp_path), raise_on_error=False
    )
    assert not result.success
    assert "TrainingFileIOManager stores TrainingFile objects, got DataFrame" in _failure(result)
    assert not output.exists()


def test_a_consumer_of_an_unnamed_training_file_is_refused_naming_the_fix(tmp_path: Path) -> None:
    @dg.asset(io_manager_key="training_io_manager")
    def training_file(training_io_manager: dg.ResourceParam[TrainingFileIOManager]) -> TrainingFile:
        staged = _staged(training_io_manager, "usdjpy", _frame(3))
        return TrainingFile(pair="usdjpy", staged=staged, passed=True)

    @dg.asset(io_manager_key="frame_io_manager")
    def rows(training_file: pl.LazyFrame) -> pl.DataFrame:
        return training_file.select(pl.len()).collect()

    result = dg.materialize(
        [training_file, rows],
        resources=_resources(str(tmp_path / "output"), tmp_path),
        raise_on_error=False,
    )
    assert result.is_node_success("training_file") and not result.success
    assert "cannot tell which pair's training file training_file is" in _failure(result)


def test_consumer_of_every_pair_gets_a_dict_of_lazy_frames(tmp_path: Path) -> None:
    producer, _ = _assets()

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
def every_family(
    tmp_path_factory: pytest.TempPathFactory, warehouses: Warehouses
) -> tuple[Any, Path, Path]:
    """eurusd's catalog cut to its first table of every family, its file and a warehouse."""
    from bqx_assets.core.catalog import Catalog

    catalog = cut_to_every_family(Catalog.load())
    root = tmp_path_factory.mktemp("every_family")
    path = catalog.dump(root / "catalog.json")
    return catalog, path, warehouses.path(catalog, pairs=["eurusd"], rows=1500)


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
            catalog_path=str(catalog_path), gate={"min_rows": 100}, workdir=str(local / "work")
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
    gcs_emulator: GCSEmulator,
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
    key = meta["dagster/uri"].removeprefix(
        f"gs://{output}/"
    )  # published, or quarantined by the gate
    published = outputs.stat(key)
    assert published is not None
    assert meta["crc32c"] == published.crc32c
    # No local copy of a checkpoint or of the training file was ever made.
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    names = [b.name for b in gcs_emulator.client().list_blobs(output)]
    assert not [n for n in names if n.endswith(".tmp")]  # the temporary object was deleted
    # The step's record: its memory is its RSS plus what it held on disk.
    usage = recorded_usage(meta)
    assert (
        usage[STEP_FOOTPRINT_BYTES] == usage["step_peak_rss_bytes"] + usage[STEP_PEAK_LOCAL_BYTES]
    )
    assert meta["step_peak_memory_mib"] == round(usage[STEP_FOOTPRINT_BYTES] / 2**20, 1)

    local = tmp_path.parent / f"{tmp_path.name}-local"
    built = _build_pair(
        every_family, str(local / "checkpoints"), str(local / "out"), local / "scratch"
    )
    assert _published_metadata(built)["status"] == meta["status"]
    expected = pq.read_table(_published_metadata(built)["dagster/uri"])
    from_gcs = outputs.open_file(key, size=published.size, crc32c=published.crc32c)
    assert from_gcs.remote  # read in place, by ranged reads of the object
    got = pq.ParquetFile(from_gcs.reader()).read()
    assert got.column_names == expected.column_names
    for name in expected.column_names:
        assert got.column(name).equals(expected.column(name)), name
