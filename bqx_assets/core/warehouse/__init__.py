"""Where feature and targets tables are read from: BigQuery, or the embedded DuckDB warehouse."""

from __future__ import annotations

from bqx_assets.core.warehouse.base import (
    Cut,
    DateRange,
    PartitionState,
    PartitionStates,
    SourceState,
    TableRead,
    Warehouse,
)

__all__ = [
    "Cut",
    "DateRange",
    "PartitionState",
    "PartitionStates",
    "SourceState",
    "TableRead",
    "Warehouse",
]
