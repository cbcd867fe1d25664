"""Per-day partitions of tables from `INFORMATION_SCHEMA.PARTITIONS`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


def partition_states(wh: BigQueryWarehouse, dataset: str, tables: Sequence[str]) -> PartitionStates:
    """Per-day partitions of the tables from `INFORMATION_SCHEMA.PARTITIONS`: one metadata
    query for the dataset (not one per table), `partition_id` YYYYMMDD of DATE(interval_time).

    A table with rows in `__UNPARTITIONED__` (a streaming buffer not yet partitioned) or
    not partitioned by day is an error naming it: no day could say where those rows are.
    Where the view has no `last_modified_time` (the emulator), each day takes its table's
    last-modified time: a change that moves it makes all of the table's days changed
    (local-bigquery 0.3.2 moves it on metadata changes only, not on loads: there a day is
    seen to change by its row count)."""
    names = sorted(set(tables))
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
    out: dict[str, list[PartitionState]] = {}
    for name, partition, rows, modified in zip(
        *(data.column(i).to_pylist() for i in range(4)), strict=True
    ):
        if not rows and partition in ("__NULL__", "__UNPARTITIONED__"):
            continue
        if partition is None or not partition.isdigit() or len(partition) != 8:
            raise WarehouseError(
                f"{dataset}.{name}: partition {partition!r} ({rows} rows) is not a day of "
                f"DATE({KEY}); a refresh by day needs tables partitioned by it"
            )
        if isinstance(modified, datetime):
            stamp = modified.astimezone(UTC).isoformat()
        else:
            stamp = table_times.get(name, "")
        day = datetime.strptime(partition, "%Y%m%d").replace(tzinfo=UTC).date()
        out.setdefault(name, []).append(PartitionState(day, int(rows or 0), stamp))
    return PartitionStates({name: tuple(states) for name, states in out.items()})


def _partitions_query(
    wh: BigQueryWarehouse, dataset: str, names: Sequence[str], modified: str
) -> pa.Table:
    from google.cloud.bigquery import ArrayQueryParameter, QueryJobConfig

    sql = (
        f"SELECT table_name, partition_id, total_rows, {modified} AS last_modified_time "
        f"FROM `{wh.project}.{dataset}.INFORMATION_SCHEMA.PARTITIONS` "
        "WHERE table_name IN UNNEST(@tables) ORDER BY table_name, partition_id"
    )
    config = QueryJobConfig(query_parameters=[ArrayQueryParameter("tables", "STRING", names)])

    def query() -> pa.Table:
        result = wh.client.query_and_wait(
            sql, job_config=config, location=wh.location, retry=None, job_retry=None
        )
        return result.to_arrow(create_bqstorage_client=False)

    return wh._call(f"{dataset}.INFORMATION_SCHEMA.PARTITIONS", query)
