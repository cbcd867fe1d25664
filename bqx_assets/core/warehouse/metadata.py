"""What a warehouse's metadata says about the catalog's datasets and tables (no row is read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.base import Warehouse

DAY = "DAY"
"""The partitioning the refresh needs: by day (DATE(interval_time))."""


@dataclass(frozen=True)
class TableFacts:
    """One table as the warehouse describes it (BigQuery: tables.get)."""

    dataset: str
    name: str
    kind: str
    """BigQuery's table `type`: TABLE, VIEW, MATERIALIZED_VIEW, EXTERNAL, SNAPSHOT..."""
    partitioning: tuple[str, str | None] | None
    """(type, field) of its time partitioning, e.g. ("DAY", "interval_time"); None: none (a
    field of None is ingestion-time partitioning)."""
    columns: Mapping[str, str]
    """Column name -> standard SQL type (TIMESTAMP, FLOAT64...), in the table's order."""
    bytes: int
    rows: int
    streaming_rows: int = 0
    """Rows BigQuery estimates are in the streaming buffer (`streamingBuffer.estimatedRows`)."""


@dataclass(frozen=True)
class Access:
    """Whether the credentials may do one thing a run does, tested without reading rows."""

    what: str
    """`read sessions` or `extract jobs`."""
    on: str
    """What it was tested on (`dataset.table`, or `project p`)."""
    refused: str | None = None
    """Why not; None where it is allowed."""


@dataclass(frozen=True)
class WarehouseFacts:
    """The datasets' locations, the catalog tables that exist, and the credentials' access."""

    location: str | None
    """The location the warehouse sends with its jobs (None: the dataset's own)."""
    datasets: Mapping[str, str | None]
    """Dataset -> its location (None for a warehouse without locations); missing ones absent."""
    tables: Mapping[tuple[str, str], TableFacts]
    """(dataset, name) -> facts, for the tables that exist."""
    access: Sequence[Access] = field(default_factory=tuple)


def embedded_facts(wh: Warehouse, tables: Sequence[tuple[str, str]]) -> WarehouseFacts:
    """Facts of a warehouse known only through the interface (the embedded one): its columns
    from `information_schema`, sizes from `states`. Every table it holds is a table of rows,
    day-partitioned on `interval_time` in the sense its `partition_states` uses (DATE of the
    key), so only a table without the key has no partitioning; it has no locations and no
    permissions (a local file opened read-only)."""
    columns: dict[tuple[str, str], dict[str, str]] = {}
    for row in wh.information_schema():
        columns.setdefault((row.dataset, row.table), {})[row.column] = row.dtype
    datasets = {dataset for dataset, _ in columns}
    found: dict[tuple[str, str], TableFacts] = {}
    for dataset in sorted({d for d, _ in tables}):
        names = [n for d, n in tables if d == dataset and (d, n) in columns]
        for name, state in wh.states(dataset, names).items():
            cols = columns[(dataset, name)]
            found[(dataset, name)] = TableFacts(
                dataset, name, "TABLE", (DAY, KEY) if KEY in cols else None, cols,
                state.bytes, state.rows,
            )  # fmt: skip
    return WarehouseFacts(None, dict.fromkeys(sorted(datasets)), found)
