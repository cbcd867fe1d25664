"""BigQueryWarehouse: feature and targets tables read through the BigQuery and Storage Read APIs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bqx_assets.core.catalog import SchemaRow
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse.base import (
    Cut,
    DateRange,
    PartitionStates,
    SourceState,
    TableRead,
    Warehouse,
)
from bqx_assets.core.warehouse.bigquery import export, partitions, read
from bqx_assets.core.warehouse.bigquery.retry import Retrier, RetrySettings

if TYPE_CHECKING:
    import google.auth.credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

# The API's schema reports legacy names; INFORMATION_SCHEMA and the catalog use standard SQL names.
_STANDARD_TYPES = {
    "FLOAT": "FLOAT64",
    "INTEGER": "INT64",
    "BOOLEAN": "BOOL",
    "NUMERIC": "NUMERIC",
    "BIGNUMERIC": "BIGNUMERIC",
}


class BigQueryWarehouse(Warehouse):
    """The production warehouse: metadata over the BigQuery REST API, rows over Storage Read.

    `api_endpoint` and `read_endpoint` point the clients at an emulator (`http://host:port` and
    `host:port`, an insecure gRPC channel); with either one set and no credentials, requests go
    anonymously. Without them, the clients use Application Default Credentials and Google's
    endpoints. dagster-gcp's `BigQueryResource` cannot take an endpoint, hence our own clients.
    `gcs_local_root` is the folder where an emulator's extract jobs write `gs://bucket/name`
    (as `{root}/bucket/name`): exported files are read back from there instead of from GCS.
    """

    name = "bigquery"

    def __init__(
        self,
        project: str,
        features_dataset: str,
        targets_dataset: str,
        *,
        location: str | None = None,
        api_endpoint: str | None = None,
        read_endpoint: str | None = None,
        credentials: google.auth.credentials.Credentials | None = None,
        max_read_streams: int = 4,
        retry: RetrySettings | None = None,
        rpc_timeout_s: float = 300.0,
        stream_timeout_s: float = 1800.0,
        gcs_local_root: str | None = None,
    ) -> None:
        # The generated client, not the package's wrapper: the wrapper's read_rows resumes some
        # dropped streams on its own, out of sight of the retry budget and its count; here
        # _read_stream alone resumes a stream, at the row after the last one it received.
        from google.cloud.bigquery_storage_v1.services.big_query_read import BigQueryReadClient

        self.project = project
        self.features_dataset = features_dataset
        self.targets_dataset = targets_dataset
        self.location = location
        self.max_read_streams = max(1, max_read_streams)
        self.retry_settings = retry or RetrySettings()
        self.rpc_timeout_s = rpc_timeout_s
        # A whole stream of a wide table may take minutes; a connection that died silently must
        # still end (the client's own default is a day).
        self.stream_timeout_s = stream_timeout_s
        self.gcs_local_root = gcs_local_root
        self._retrier = Retrier(project, self.retry_settings)
        self._resumes: list[tuple[str, int]] = []
        # False once the PARTITIONS view was found without `last_modified_time` (an emulator):
        # later look-ups go straight to the query without it instead of failing first.
        self._partition_times = True
        self._lock = threading.Lock()
        if credentials is None and (api_endpoint or read_endpoint):
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        client_options = {"api_endpoint": api_endpoint} if api_endpoint else None
        self.client = bigquery.Client(
            project=project,
            credentials=credentials,
            location=location,
            client_options=client_options,
        )
        if read_endpoint:
            import grpc
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            # Short reconnect backoff: a local endpoint that dropped a connection is back at once,
            # and gRPC's default first backoff (1 s, growing) would dominate a retried read.
            channel = grpc.insecure_channel(
                read_endpoint,
                options=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                    ("grpc.max_receive_message_length", -1),
                ],
            )
            self.read_client = BigQueryReadClient(
                transport=BigQueryReadGrpcTransport(channel=channel)
            )
        else:
            self.read_client = BigQueryReadClient(credentials=credentials)

    # -- retries ---------------------------------------------------------------------------
    @property
    def retries(self) -> int:
        """Transient failures retried so far (for run metadata)."""
        return self._retrier.retries

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return self._retrier.call(what, fn)

    # -- Warehouse -------------------------------------------------------------------------
    def information_schema(self) -> list[SchemaRow]:
        """`INFORMATION_SCHEMA.COLUMNS` of both datasets (one query each, free of scan charges
        beyond the metadata minimum)."""
        rows: list[SchemaRow] = []
        for dataset in (self.features_dataset, self.targets_dataset):
            rows.extend(self._schema_rows(dataset))
        return rows

    def _schema_rows(self, dataset: str) -> list[SchemaRow]:
        sql = (
            "SELECT table_name, column_name, ordinal_position, data_type "
            f"FROM `{self.project}.{dataset}.INFORMATION_SCHEMA.COLUMNS` "
            "ORDER BY table_name, ordinal_position"
        )

        def query() -> pa.Table:
            result = self.client.query_and_wait(
                sql, location=self.location, retry=None, job_retry=None
            )
            return result.to_arrow(create_bqstorage_client=False)

        try:
            data = self._call(f"{dataset}.INFORMATION_SCHEMA.COLUMNS", query)
        except WarehouseError as exc:
            if not isinstance(exc.__cause__, gexc.BadRequest):
                raise
            # A warehouse without INFORMATION_SCHEMA (some emulators) still lists tables and
            # their schemas through the API: one call per table instead of one query.
            log.warning("bigquery: %s; listing tables through the API instead", exc)
            return self._schema_rows_from_api(dataset)
        return [
            SchemaRow(dataset, t, c, int(o), d)
            for t, c, o, d in zip(*(data.column(i).to_pylist() for i in range(4)), strict=True)
        ]

    def _schema_rows_from_api(self, dataset: str) -> list[SchemaRow]:
        ref = bigquery.DatasetReference(self.project, dataset)
        items = self._call(dataset, lambda: list(self.client.list_tables(ref, retry=None)))
        rows: list[SchemaRow] = []
        for item in items:
            table = self._call(
                f"{dataset}.{item.table_id}",
                lambda item=item: self.client.get_table(item.reference, retry=None),
            )
            for ordinal, field in enumerate(table.schema, start=1):
                dtype = _STANDARD_TYPES.get(field.field_type, field.field_type)
                rows.append(SchemaRow(dataset, item.table_id, field.name, ordinal, dtype))
        return rows

    def state(self, dataset: str, table: str) -> SourceState:
        ref = bigquery.TableReference(bigquery.DatasetReference(self.project, dataset), table)
        info = self._call(f"{dataset}.{table}", lambda: self.client.get_table(ref, retry=None))
        modified = info.modified or info.created or datetime.fromtimestamp(0, UTC)
        return SourceState(
            dataset=dataset,
            table=table,
            rows=int(info.num_rows or 0),
            last_modified=modified.astimezone(UTC).isoformat(),
            bytes=int(info.num_bytes or 0),
        )

    def partition_states(
        self, dataset: str, tables: Sequence[str], *, cut: Cut | None = None
    ) -> PartitionStates:
        return partitions.partition_states(self, dataset, tables)

    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        return read.read_table(self, dataset, table, columns, window)

    @property
    def resumes(self) -> list[tuple[str, int]]:
        """(stream, row offset) of each stream read resumed part-way so far (for run metadata
        and tests)."""
        with self._lock:
            return list(self._resumes)

    # -- extract jobs ----------------------------------------------------------------------
    def export(
        self, dataset: str, table: str, destination_uri: str, *, compression: str = "ZSTD"
    ) -> export.ExportResult:
        return export.export(self, dataset, table, destination_uri, compression=compression)

    def export_table(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        staging_uri: str,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        return export.export_table(self, dataset, table, columns, staging_uri)

    def close(self) -> None:
        self.client.close()
        transport: Any = getattr(self.read_client, "_transport", None)
        if transport is not None:
            transport.close()
