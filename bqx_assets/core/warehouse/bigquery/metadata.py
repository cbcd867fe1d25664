"""The catalog's datasets and tables as BigQuery's metadata describes them, and what the
credentials may do: datasets.get, tables.get, tables.testIamPermissions, a dry-run query and a
read session that selects no row. Nothing is read from the tables."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.bigquery.warehouse import STANDARD_TYPES
from bqx_assets.core.warehouse.metadata import Access, TableFacts, WarehouseFacts

if TYPE_CHECKING:
    from bqx_assets.core.warehouse.bigquery.warehouse import BigQueryWarehouse

GET_DATA = "bigquery.tables.getData"
"""What a read session needs on the table, beside `bigquery.readsessions.create` on the
project (https://cloud.google.com/bigquery/docs/reference/storage#permissions)."""
EXPORT = "bigquery.tables.export"
"""What an extract job needs on the table, beside `bigquery.jobs.create` on the project
(https://cloud.google.com/bigquery/docs/exporting-data#required_permissions)."""
READ_SESSIONS, EXTRACT_JOBS = "read sessions", "extract jobs"
NOTHING = "FALSE"
"""A row restriction that selects no row: the session is created (its permissions checked)
and has no stream to read."""
LOOKUP_THREADS = 8
"""tables.get calls at once (5,059 tables: one call each, a few minutes one at a time)."""


def bigquery_facts(wh: BigQueryWarehouse, tables: Sequence[tuple[str, str]]) -> WarehouseFacts:
    """The datasets' locations, the tables' facts (tables.get: `type`, `timePartitioning`,
    `schema`, `numBytes`, `numRows`, `streamingBuffer.estimatedRows`,
    https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#Table) and the access of
    the credentials, tested on the first table that exists of each dataset."""
    datasets: dict[str, str | None] = {}
    for dataset in sorted({d for d, _ in tables}):
        ref = bigquery.DatasetReference(wh.project, dataset)
        try:
            datasets[dataset] = wh._call(
                dataset, lambda ref=ref: wh.client.get_dataset(ref)
            ).location
        except WarehouseError as exc:
            if not isinstance(exc.__cause__, gexc.NotFound):
                raise
    wanted = [(d, n) for d, n in tables if d in datasets]
    with ThreadPoolExecutor(LOOKUP_THREADS) as pool:
        described = list(pool.map(lambda t: _table(wh, *t), wanted))
    found = {(f.dataset, f.name): f for f in described if f is not None}
    access: list[Access] = []
    for dataset, location in datasets.items():
        first = next((n for d, n in tables if d == dataset and (d, n) in found), None)
        if first is not None:
            access += _table_access(wh, dataset, first)
            if dataset == min(datasets):
                access += _project_access(wh, dataset, first, location)
    return WarehouseFacts(wh.location, datasets, found, tuple(access))


def _table(wh: BigQueryWarehouse, dataset: str, name: str) -> TableFacts | None:
    ref = bigquery.TableReference(bigquery.DatasetReference(wh.project, dataset), name)
    try:
        info = wh._call(f"{dataset}.{name}", lambda: wh.client.get_table(ref, retry=None))
    except WarehouseError as exc:
        if isinstance(exc.__cause__, gexc.NotFound):
            return None
        raise
    partitioning = info.time_partitioning
    buffer = info.streaming_buffer
    return TableFacts(
        dataset=dataset,
        name=name,
        kind=info.table_type or "TABLE",
        partitioning=(partitioning.type_, partitioning.field) if partitioning else None,
        columns={f.name: STANDARD_TYPES.get(f.field_type, f.field_type) for f in info.schema},
        bytes=int(info.num_bytes or 0),
        rows=int(info.num_rows or 0),
        streaming_rows=int(buffer.estimated_rows or 0) if buffer else 0,
    )


def _table_access(wh: BigQueryWarehouse, dataset: str, name: str) -> list[Access]:
    """tables.testIamPermissions: the subset of the permissions asked for that the caller has
    (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/testIamPermissions)."""
    ref = bigquery.TableReference(bigquery.DatasetReference(wh.project, dataset), name)
    asked = [GET_DATA, EXPORT]
    held = wh._call(
        f"{dataset}.{name}", lambda: wh.client.test_iam_permissions(ref, asked, retry=None)
    ).get("permissions", [])
    on = f"{dataset}.{name}"
    return [
        Access(what, on, None if permission in held else f"no {permission} on {on}")
        for what, permission in ((READ_SESSIONS, GET_DATA), (EXTRACT_JOBS, EXPORT))
    ]


def _project_access(
    wh: BigQueryWarehouse, dataset: str, name: str, location: str | None
) -> list[Access]:
    """Project-level permissions, used without reading a row: a read session whose row
    restriction selects nothing (`bigquery.readsessions.create`), and a dry-run query
    (`bigquery.jobs.create`: a dry run needs it and processes nothing,
    https://cloud.google.com/bigquery/docs/running-queries#dry-run) for the extract jobs."""
    from google.cloud.bigquery_storage_v1 import types

    on = f"project {wh.project}"
    session = types.ReadSession(
        table=f"projects/{wh.project}/datasets/{dataset}/tables/{name}",
        data_format=types.DataFormat.ARROW,
        read_options=types.ReadSession.TableReadOptions(
            selected_fields=[KEY], row_restriction=NOTHING
        ),
    )
    refused = []
    try:
        wh._call(
            on,
            lambda: wh.read_client.create_read_session(
                parent=f"projects/{wh.project}", read_session=session, max_stream_count=1,
                timeout=wh.rpc_timeout_s,
            ),
        )  # fmt: skip
        refused.append(None)
    except WarehouseError as exc:
        refused.append(str(exc))
    sql = f"SELECT {KEY} FROM `{wh.project}.{dataset}.{name}` WHERE {NOTHING}"
    config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
    try:
        wh._call(
            on,
            lambda: wh.client.query(
                sql, job_config=config, location=location or wh.location, retry=None,
                job_retry=None,
            ),
        )  # fmt: skip
        refused.append(None)
    except WarehouseError as exc:
        refused.append(str(exc))
    return [
        Access(READ_SESSIONS, on, refused[0]),
        Access(EXTRACT_JOBS, on, refused[1]),
    ]
