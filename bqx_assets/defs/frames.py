"""An IO manager for small Polars frames, on dagster-polars (kept apart: it imports dagster-gcp)."""

from __future__ import annotations

import dagster as dg
from dagster_polars import PolarsParquetIOManager


class FrameIOManager(PolarsParquetIOManager):
    """Small Polars frames (reports, samples, per-pair summaries) as parquet under a local folder.

    The input annotation chooses an eager `pl.DataFrame` or a lazy `pl.LazyFrame`. The root must
    be local: Polars' own gs:// reader would ask the cloud metadata server for a token; large
    files go through `TrainingFileIOManager` instead.
    """

    # dagster-polars 0.27.12 loads with `pl.scan_parquet(rechunk=..., retries=...)`: polars 1.43
    # deprecates both and polars 2 removes them (pola-rs/polars#28760, #27986), so the load fails
    # there. That is why pyproject pins `polars<2`; test_frame_io_manager_round_trip guards it.

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if "://" in str(self.base_dir or "") and not str(self.base_dir).startswith("file://"):
            raise dg.DagsterInvariantViolationError(
                f"FrameIOManager stores frames in a local folder, not {self.base_dir}"
            )
        super().setup_for_execution(context)
