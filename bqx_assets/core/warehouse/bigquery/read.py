"""Rows of a table through one Storage Read session: projected and restricted server-side,
streams read in parallel and resumed where they dropped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.keys import by_key
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.base import Cut, DateRange, TableRead

if TYPE_CHECKING:
    from bqx_assets.core.warehouse.bigquery.warehouse import BigQueryWarehouse

log = logging.getLogger(__name__)


def read_table(
    wh: BigQueryWarehouse,
    dataset: str,
    table: str,
    columns: Sequence[str],
    window: DateRange,
    *,
    cut: Cut | None = None,
) -> TableRead:
    """One Storage Read session: only `columns` and the window's rows leave BigQuery (column
    projection and the row restriction are applied server-side, so the bytes billed are those
    of the selected columns); streams are read in parallel and sorted by the key in Arrow,
    since Storage Read does not order rows.

    With a `cut`, the session reads the table as it was at `cut.at`
    (`ReadSession.TableModifiers.snapshot_time`: "The snapshot time of the table. If not set,
    interpreted as now.",
    https://cloud.google.com/bigquery/docs/reference/storage/rpc/google.cloud.bigquery.storage.v1#tablemodifiers):
    every table of a run as of one moment, whatever upstream jobs write meanwhile."""
    from google.cloud.bigquery_storage_v1 import types

    what = f"{dataset}.{table}"
    columns = list(dict.fromkeys(columns))
    if KEY not in columns:
        columns.insert(0, KEY)
    request = types.ReadSession(
        table=f"projects/{wh.project}/datasets/{dataset}/tables/{table}",
        data_format=types.DataFormat.ARROW,
        read_options=types.ReadSession.TableReadOptions(
            selected_fields=columns, row_restriction=row_restriction(window)
        ),
    )
    if cut is not None:
        request.table_modifiers = types.ReadSession.TableModifiers(snapshot_time=cut.at)
    session = wh._call(
        what,
        lambda: wh.read_client.create_read_session(
            parent=f"projects/{wh.project}",
            read_session=request,
            max_stream_count=wh.max_read_streams,
            retry=None,
            timeout=wh.rpc_timeout_s,
        ),
    )
    schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise WarehouseError(f"{what}: no column(s) {', '.join(missing)}")
    streams = [s.name for s in session.streams]
    results: list[tuple[list[pa.RecordBatch], int]]
    if len(streams) <= 1:
        results = [_read_stream(wh, what, name, schema) for name in streams]
    else:
        with ThreadPoolExecutor(
            max_workers=min(len(streams), wh.max_read_streams),
            thread_name_prefix="bq-read",
        ) as pool:
            results = list(pool.map(lambda name: _read_stream(wh, what, name, schema), streams))
    batches = [b for stream_batches, _ in results for b in stream_batches]
    data = pa.Table.from_batches(batches, schema=schema).select(columns)
    data, _ = by_key(data, what, WarehouseError)
    # A session reports an estimate of the bytes it will scan, "based on metadata from the
    # table which might be incomplete or stale" (ReadSession.estimated_total_bytes_scanned,
    # https://cloud.google.com/bigquery/docs/reference/storage/rpc/google.cloud.bigquery.storage.v1#readsession),
    # not what it bills; where none is reported (an emulator), the Arrow bytes received stand
    # in for it, also an estimate.
    scanned = int(session.estimated_total_bytes_scanned or 0)
    bytes_read = scanned or sum(n for _, n in results)
    return TableRead(data=data.combine_chunks(), bytes_read=bytes_read, bytes_estimated=True)


def _read_stream(
    wh: BigQueryWarehouse, what: str, stream: str, schema: pa.Schema
) -> tuple[list[pa.RecordBatch], int]:
    """Every batch of one stream. A stream that fails transiently part-way is read on from
    the row after the last one received (ReadRowsRequest.offset), not from its start: the
    rows already decoded are kept and none arrives twice."""
    batches: list[pa.RecordBatch] = []
    received = 0

    def attempt() -> tuple[list[pa.RecordBatch], int]:
        nonlocal received
        offset = sum(b.num_rows for b in batches)
        if offset:
            with wh._lock:
                wh._resumes.append((stream, offset))
            log.info("bigquery: %s: resuming stream %s at row %d", what, stream, offset)
        # This attempt's deadline: a resumed stream has its whole `stream_timeout_s` again.
        responses = wh.read_client.read_rows(
            read_stream=stream, offset=offset, retry=None, timeout=wh.stream_timeout_s
        )
        for response in responses:
            payload = response.arrow_record_batch.serialized_record_batch
            if not payload:
                continue
            # Kept only once decoded whole: the offset counts complete batches only.
            batches.append(pa.ipc.read_record_batch(pa.py_buffer(payload), schema))
            received += len(payload)
        return batches, received

    # Each attempt has its own deadline (`stream_timeout_s`): a stream that dropped after
    # twenty minutes of reading is resumed, not refused for the time its first attempt took.
    return wh._call(what, attempt, overall_deadline=False)


def row_restriction(window: DateRange) -> str:
    """The Storage Read filter for `start <= interval_time < end` (empty when unbounded)."""
    parts = []
    if window.start is not None:
        parts.append(f"{KEY} >= TIMESTAMP '{_timestamp_literal(window.start)}'")
    if window.end is not None:
        parts.append(f"{KEY} < TIMESTAMP '{_timestamp_literal(window.end)}'")
    return " AND ".join(parts)


def _timestamp_literal(value: datetime) -> str:
    # Naive times are taken as UTC, the warehouse's time zone.
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
