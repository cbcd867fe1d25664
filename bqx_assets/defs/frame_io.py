"""The frame IO manager as a resource that imports dagster-polars only when a run uses it."""

from __future__ import annotations

import dagster as dg


class FrameIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Builds `frames.FrameIOManager` (dagster-polars' parquet IO manager) for a run.

    dagster-polars imports its BigQuery IO manager and so dagster-gcp (seconds): deferred to the
    runs that store a frame, it stays out of the definitions' load time."""

    base_dir: str = "data/frames"
    """Local folder of the frames: `{asset key}/{partition}.parquet`."""

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        from bqx_assets.defs.frames import FrameIOManager

        manager = FrameIOManager(base_dir=self.base_dir)
        manager.setup_for_execution(context)
        return manager
