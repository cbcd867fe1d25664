"""Where feature and targets tables are read from: BigQuery, or the embedded DuckDB warehouse."""

from __future__ import annotations

from bqx_assets.core.warehouse.base import (
    DateRange,
    PartitionState,
    SourceState,
    TableRead,
    Warehouse,
)

__all__ = ["DateRange", "PartitionState", "SourceState", "TableRead", "Warehouse"]
