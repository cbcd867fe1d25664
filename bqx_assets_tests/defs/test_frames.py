"""The frame IO manager (dagster-polars, local parquet): eager and lazy loads, local roots only;
built for a run by its factory."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from bqx_assets.defs.frame_io import FrameIOManagerFactory
from bqx_assets.defs.frames import FrameIOManager


def _frame(rows: int) -> pl.DataFrame:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "interval_time": pl.datetime_range(
                start, start.replace(hour=rows - 1), "1h", eager=True, time_unit="us"
            ),
            "target_bqx45_h15": [i / 10 for i in range(rows)],
        }
    )


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


def test_the_factory_builds_the_frame_io_manager_for_a_run(tmp_path: Path) -> None:
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["eurusd"]))
    def frame() -> pl.DataFrame:
        return _frame(2)

    factory = FrameIOManagerFactory(base_dir=str(tmp_path))
    assert dg.materialize(
        [frame], resources={"io_manager": factory}, partition_key="eurusd"
    ).success
    assert pl.read_parquet(tmp_path / "frame" / "eurusd.parquet").equals(_frame(2))
    with pytest.raises(dg.DagsterInvariantViolationError, match="local folder"):
        dg.materialize(
            [frame],
            resources={"io_manager": FrameIOManagerFactory(base_dir="gs://b/x")},
            partition_key="eurusd",
        )
