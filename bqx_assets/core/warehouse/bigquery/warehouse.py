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
from bqx_assets.core.warehouse.bigquery.retry import Retrier, RetrySettings, is_transient

if TYPE_CHECKING:
    import google.auth.credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

# The API's schema reports legacy names; INFORMATION_SCHEMA and the catalog use standard SQL names.
STANDARD_TYPES = {
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
        partitions_batch: int = partitions.PARTITIONS_TABLE_LIMIT,
        poll_timeout_s: float = 300.0,
        export_timeout_s: float = 6 * 3600.0,
    ) -> None:
        # The generated client, not the package's wrapper: the wrapper's read_rows resumes some
        # dropped streams on its own, out of sight of the retry budget and its count; here
        # _read_stream alone resumes a stream, at the row after the last one it received.
        from google.cloud.bigquery_storage_v1.services.big_query_read import BigQueryReadClient

        self.project = project
        self.features_dataset = features_dataset
        self.targets_dataset = targets_dataset
        self.location = location
        """The configured location; None takes each dataset's own (`location_of`)."""
        self._locations: dict[str, str] = {}
        self._billed: list[tuple[str, int]] = []
        self.max_read_streams = max(1, max_read_streams)
        self.retry_settings = retry or RetrySettings()
        self.rpc_timeout_s = rpc_timeout_s
        # A whole stream of a wide table may take minutes; a connection that died silently must
        # still end (the client's own default is a day).
        self.stream_timeout_s = stream_timeout_s
        self.gcs_local_root = gcs_local_root
        # An extract job is polled for `poll_timeout_s` at a time, by id, until it is done or
        # `export_timeout_s` has passed.
        self.poll_timeout_s = poll_timeout_s
        self.export_timeout_s = export_timeout_s
        if not 1 <= partitions_batch <= partitions.PARTITIONS_TABLE_LIMIT:
            raise WarehouseError(
                f"partitions_batch {partitions_batch}: must be 1 to "
                f"{partitions.PARTITIONS_TABLE_LIMIT} (BigQuery's limit)"
            )
        self._partitions_batch = partitions_batch
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

    @property
    def waited_s(self) -> float:
        """Seconds slept between retries so far (a server's RetryInfo delay, or back-off)."""
        return self._retrier.waited_s

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        transient: Callable[[BaseException], bool] = is_transient,
        overall_deadline: bool = True,
    ) -> T:
        return self._retrier.call(what, fn, transient=transient, overall_deadline=overall_deadline)

    # -- location --------------------------------------------------------------------------
    def location_of(self, dataset: str) -> str:
        """Where `dataset` lives (datasets.get, once per dataset): the location its query and
        extract jobs name. A job must run where its dataset is; a job that names another
        location is answered "not found" (https://cloud.google.com/bigquery/docs/locations),
        so a configured location that differs is one clear error here, before any job."""
        with self._lock:
            known = self._locations.get(dataset)
        if known is not None:
            return known
        ref = bigquery.DatasetReference(self.project, dataset)
        info = self._call(dataset, lambda: self.client.get_dataset(ref, retry=None))
        actual = info.location or self.location or ""
        if self.location and actual and actual.lower() != self.location.lower():
            raise WarehouseError(
                f"dataset {self.project}.{dataset} is in location {actual}, but the warehouse "
                f"is configured for location {self.location}: configure {actual} (or no "
                "location, to take each dataset's own)"
            )
        with self._lock:
            self._locations[dataset] = actual
        return actual

    # -- bytes billed ----------------------------------------------------------------------
    def _bill(self, what: str, job: Any) -> None:
        billed = int(getattr(job, "total_bytes_billed", None) or 0)
        with self._lock:
            self._billed.append((what, billed))

    @property
    def bytes_billed(self) -> int:
        """Bytes BigQuery billed for this warehouse's query jobs so far (`total_bytes_billed`
        of each job: metadata queries bill a minimum), for a step's metadata."""
        with self._lock:
            return sum(n for _, n in self._billed)

    @property
    def query_jobs(self) -> list[tuple[str, int]]:
        """(what, bytes billed) of each query job run so far."""
        with self._lock:
            return list(self._billed)

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

        what = f"{dataset}.INFORMATION_SCHEMA.COLUMNS"
        try:
            data = self.query(what, dataset, sql)
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

    def query(self, what: str, dataset: str, sql: str, config: Any = None) -> pa.Table:
        """The rows of one query job run where `dataset` lives; its `total_bytes_billed` is
        counted (`bytes_billed`). A job still running when a poll times out is polled again by
        id, not run again (`job.result(timeout=)` raising does not stop the job: a second one
        would bill again beside it); a job that failed, or a call that failed, with a
        transient error is run again; a job still running when the query gives up is
        cancelled."""
        location = self.location_of(dataset)
        running: list[Any] = []  # the job being polled, until it fails

        def run() -> pa.Table:
            if not running:
                # The client's own job retries (a new job on some errors) are off: this
                # retrier alone retries, counted.
                running.append(
                    self.client.query(
                        sql, job_config=config, location=location, retry=None, job_retry=None
                    )
                )
            job = running[0]
            try:
                rows = job.result(retry=None, timeout=self.rpc_timeout_s, job_retry=None)
                data = rows.to_arrow(create_bqstorage_client=False)
            except TimeoutError:
                raise  # still running: the next attempt polls the same job
            except BaseException:
                running.clear()
                raise
            self._bill(what, job)
            return data

        try:
            return self._call(what, run)
        except BaseException:
            for job in running:
                self.cancel_job(what, job.job_id, location)
            raise

    def cancel_job(self, what: str, job_id: str, location: str) -> None:
        """Ask BigQuery to cancel a job (a finished or never-created one is left as it is)."""
        try:
            self.client.cancel_job(
                job_id, project=self.project, location=location, retry=None,
                timeout=self.rpc_timeout_s,
            )  # fmt: skip
            log.warning("bigquery: %s: job %s cancelled", what, job_id)
        except Exception as exc:  # the caller's own error is the one to report
            log.info("bigquery: %s: job %s not cancelled: %r", what, job_id, exc)

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
                dtype = STANDARD_TYPES.get(field.field_type, field.field_type)
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

    @property
    def partitions_batch(self) -> int:
        """Tables named in one `INFORMATION_SCHEMA.PARTITIONS` query."""
        return self._partitions_batch

    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        return read.read_table(self, dataset, table, columns, window, cut=cut)

    @property
    def resumes(self) -> list[tuple[str, int]]:
        """(stream, row offset) of each stream read resumed part-way so far (for run metadata
        and tests)."""
        with self._lock:
            return list(self._resumes)

    # -- extract jobs ----------------------------------------------------------------------
    def export(
        self,
        dataset: str,
        table: str,
        destination_uri: str,
        *,
        job_id: str | None = None,
        compression: str = "ZSTD",
    ) -> export.ExportResult:
        return export.export(
            self, dataset, table, destination_uri, job_id=job_id, compression=compression
        )

    def export_table(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        staging_uri: str,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        return export.export_table(self, dataset, table, columns, staging_uri, cut=cut)

    def close(self) -> None:
        self.client.close()
        transport: Any = getattr(self.read_client, "_transport", None)
        if transport is not None:
            transport.close()
