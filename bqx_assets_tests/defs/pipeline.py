"""The local deployment's resources under a test's folder, a pair built through Dagster, and a
temporary folder of its own for each test module whose steps run here."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.frame_io import FrameIOManagerFactory
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import CheckpointStore, EmbeddedWarehouseResource, PipelineSettings

PAIR = "eurusd"
DAY = 1440
"""Minutes (rows) in a day."""


def resources(
    root: Path,
    catalog_path: Path,
    warehouse: Path,
    gate: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """The local deployment's resources on `warehouse`, every root under `root` (`gate`: the
    thresholds that differ from the local deployment's)."""
    return {
        "warehouse": EmbeddedWarehouseResource(path=str(warehouse)),
        "checkpoints": CheckpointStore(root=str(root / "ckpt"), cache_dir=str(root / "cache")),
        "settings": PipelineSettings(
            catalog_path=str(catalog_path),
            workdir=str(root / "work"),
            gate={"min_rows": 100, **(gate or {})},
            **settings,
        ),
        "training_io_manager": TrainingFileIOManager(output_root=str(root / "out")),
        "frame_io_manager": FrameIOManagerFactory(base_dir=str(root / "frames")),
    }


def build(res: dict[str, Any], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """The shared checkpoints, then PAIR's checkpoints and training file (must succeed)."""
    assert dg.materialize([shared_checkpoints], resources=res, instance=instance).success
    run = dg.materialize(
        [pair_checkpoints, training_file], partition_key=PAIR, resources=res, instance=instance
    )
    assert run.success
    return run


def training_metadata(run: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (done,) = run.asset_materializations_for_node("training_file")
    return {k: v.value for k, v in done.metadata.items()}


def append_day(path: Path) -> None:
    """The next trading day in every table; the only connection to the file while it grows."""
    wh = EmbeddedWarehouse(path, read_only=False)
    try:
        wh.append(DAY)
    finally:
        wh.close()


@pytest.fixture(scope="module", autouse=True)
def private_tempdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tempfile.gettempdir()` for this module's tests: a folder of its own.

    A step measures the bytes it holds under its local folders, the temporary folder among them
    (`metrics.LocalBytes`), by walking them every 0.1 s while it runs; the machine's /tmp holds
    the whole session's test folders and whatever else runs there, and walking it made each
    step seconds slower and its measurement other processes' too."""
    folder = str(tmp_path_factory.mktemp("tempdir"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", folder)
        yield folder
