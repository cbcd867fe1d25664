"""Per-day partitions of tables from `INFORMATION_SCHEMA.PARTITIONS`, in batches within the
view's limit; a table the view cannot describe by day is an error of its own."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
from google.api_core import exceptions as gexc

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.base import PartitionState, PartitionStates

if TYPE_CHECKING:
    from bqx_assets.core.warehouse.bigquery.warehouse import BigQueryWarehouse

log = logging.getLogger(__name__)

PARTITIONS_TABLE_LIMIT = 1000
"""Tables one `INFORMATION_SCHEMA.PARTITIONS` query may read: "Querying the
INFORMATION_SCHEMA.PARTITIONS view is limited to 1000 tables. [...] you can split the query into
multiple queries" (https://cloud.google.com/bigquery/docs/information-schema-partitions)."""

TOO_MANY_TABLES = (
    "INFORMATION_SCHEMA.PARTITIONS query attempted to read too many tables. "
    "Please add more restrictive filters."
)
"""BigQuery's refusal of a query over more tables than the limit (same page)."""

# partition_id of a time-unit or integer-range partitioned table
# (https://cloud.google.com/bigquery/docs/information-schema-partitions,
# https://cloud.google.com/bigquery/docs/partitioned-tables#partition_decorators):
# YYYYMMDDHH by hour, YYYYMMDD by day, YYYYMM by month, YYYY by year, the range's start for
# integer ranges; NULL for a table that is not partitioned; `__NULL__` for rows whose
# partitioning column is NULL; `__UNPARTITIONED__` for rows in the streaming buffer.
_NOT_A_DAY = {10: "by hour", 6: "by month", 4: "by year"}


def partition_states(wh: BigQueryWarehouse, dataset: str, tables: Sequence[str]) -> PartitionStates:
    """Per-day partitions of the tables from `INFORMATION_SCHEMA.PARTITIONS`, `partition_id`
    YYYYMMDD of DATE(interval_time): one metadata query per batch of at most
    `wh.partitions_batch` tables (BigQuery's limit, `PARTITIONS_TABLE_LIMIT`); each query's
    billed bytes are counted on the warehouse (`bytes_billed`).

    A table the view cannot describe by day is in `errors` with the reason (the caller names
    the table), and the others are
    described as usual: not partitioned, partitioned by something other than a day, rows with
    a NULL key (`__NULL__`) or in the streaming buffer (`__UNPARTITIONED__`): no day could say
    where those rows are. Where the view has no `last_modified_time` (the emulator), each day
    takes its table's last-modified time: a change that moves it makes all of the table's days
    changed (local-bigquery 0.3.2 moves it on metadata changes only, not on loads: there a day
    is seen to change by its row count)."""
    names = sorted(set(tables))
    size = wh.partitions_batch
    out: dict[str, list[PartitionState]] = {}
    errors: dict[str, str] = {}
    for start in range(0, len(names), size):
        batch = names[start : start + size]
        states, odd = _batch_states(wh, dataset, batch)
        out.update(states)
        errors.update(odd)
    return PartitionStates(
        {name: tuple(states) for name, states in out.items() if name not in errors}, errors
    )


def _batch_states(
    wh: BigQueryWarehouse, dataset: str, names: Sequence[str]
) -> tuple[dict[str, list[PartitionState]], dict[str, str]]:
    data = None
    table_times: dict[str, str] = {}
    if wh._partition_times:
        try:
            data = _partitions_query(wh, dataset, names, "last_modified_time")
        except WarehouseError as exc:
            if not isinstance(exc.__cause__, gexc.BadRequest) or (
                "last_modified_time" not in str(exc)
            ):
                raise
            log.warning("bigquery: %s; partitions take their table's last-modified time", exc)
            wh._partition_times = False
    if data is None:
        data = _partitions_query(wh, dataset, names, "NULL")
        table_times = {n: s.last_modified for n, s in wh.states(dataset, names).items()}
    rows = zip(*(data.column(i).to_pylist() for i in range(4)), strict=True)
    return _days(dataset, rows, table_times)


def _days(
    dataset: str,
    rows: Iterable[tuple[str, str | None, int | None, object]],
    table_times: dict[str, str],
) -> tuple[dict[str, list[PartitionState]], dict[str, str]]:
    """Each table's days from the view's rows, and the tables no day describes, with why."""
    out: dict[str, list[PartitionState]] = {}
    errors: dict[str, str] = {}
    for name, partition, count, modified in rows:
        rows_ = int(count or 0)
        why = _not_a_day(partition, rows_)
        if why == "":
            continue
        if why is not None:
            errors.setdefault(
                name, f"{why}; a refresh by day needs every row in a day partition of DATE({KEY})"
            )
            continue
        assert partition is not None
        if isinstance(modified, datetime):
            stamp = modified.astimezone(UTC).isoformat()
        else:
            stamp = table_times.get(name, "")
        day = datetime.strptime(partition, "%Y%m%d").replace(tzinfo=UTC).date()
        out.setdefault(name, []).append(PartitionState(day, rows_, stamp))
    return out, errors


def _not_a_day(partition: str | None, rows: int) -> str | None:
    """None for a day's partition; "" for a row to skip (an empty special partition); else
    why the row is no day."""
    if partition is None:
        return "not partitioned (partition_id NULL)"
    if partition in ("__NULL__", "__UNPARTITIONED__"):
        if not rows:
            return ""
        if partition == "__NULL__":
            return f"{rows} rows with a NULL {KEY} (partition __NULL__)"
        return f"{rows} rows in the streaming buffer (partition __UNPARTITIONED__)"
    if partition.isdigit() and len(partition) == 8:
        try:
            datetime.strptime(partition, "%Y%m%d")
        except ValueError:
            pass
        else:
            return None
    if partition.lstrip("-").isdigit():
        unit = _NOT_A_DAY.get(len(partition), "by an integer range")
        return f"partitioned {unit}, not by day (partition {partition!r}, {rows} rows)"
    return f"partition {partition!r} ({rows} rows) is not a day"


def _partitions_query(
    wh: BigQueryWarehouse, dataset: str, names: Sequence[str], modified: str
) -> pa.Table:
    from google.cloud.bigquery import ArrayQueryParameter, QueryJobConfig

    sql = (
        f"SELECT table_name, partition_id, total_rows, {modified} AS last_modified_time "
        f"FROM `{wh.project}.{dataset}.INFORMATION_SCHEMA.PARTITIONS` "
        "WHERE table_name IN UNNEST(@tables) ORDER BY table_name, partition_id"
    )
    config = QueryJobConfig(query_parameters=[ArrayQueryParameter("tables", "STRING", list(names))])
    return wh.query(f"{dataset}.INFORMATION_SCHEMA.PARTITIONS", dataset, sql, config)
