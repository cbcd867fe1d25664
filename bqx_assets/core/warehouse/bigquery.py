"""BigQueryWarehouse: feature and targets tables read through the BigQuery and Storage Read APIs."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import requests
import tenacity
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bqx_assets.core.catalog import SchemaRow
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.keys import by_key
from bqx_assets.core.layout import KEY
from bqx_assets.core.storage import Storage, open_storage
from bqx_assets.core.warehouse.base import (
    DateRange,
    PartitionState,
    SourceState,
    TableRead,
    Warehouse,
)

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

# BigQuery answers 403 with these reasons for quota and rate limits, which pass with time.
_TRANSIENT_403_REASONS = frozenset({"rateLimitExceeded", "backendError", "quotaExceeded"})

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.Unknown,  # a gRPC transport error with no status (connection reset mid-stream)
    gexc.RetryError,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt can get past: 429, 5xx, deadlines, dropped connections."""
    if isinstance(exc, gexc.Forbidden):
        reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
        return bool(reasons & _TRANSIENT_403_REASONS)
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    try:
        import google.auth.exceptions

        return isinstance(exc, google.auth.exceptions.TransportError)
    except ImportError:  # pragma: no cover - google-auth always comes with the clients
        return False


@dataclass(frozen=True)
class RetrySettings:
    """Bounded exponential backoff with full jitter for transient errors."""

    attempts: int = 6
    initial_s: float = 0.5
    maximum_s: float = 30.0
    deadline_s: float = 600.0


@dataclass(frozen=True)
class ExportResult:
    """An extract job's outcome: where the parquet files are and what the job reported."""

    job_id: str
    destination_uri: str
    file_counts: tuple[int, ...]
    seconds: float


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
        self._retries = 0
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
        return self._retries

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self._retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "bigquery: transient error (attempt %d), retrying: %r", state.attempt_number, exc
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` with bounded retries of transient errors; any other error, or retries running
        out, becomes a WarehouseError naming `what` (`dataset.table`)."""
        settings = self.retry_settings
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.attempts)
            | tenacity.stop_after_delay(settings.deadline_s),
            wait=tenacity.wait_random_exponential(
                multiplier=settings.initial_s, max=settings.maximum_s
            ),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return retrying(fn)
        except WarehouseError:
            raise
        except gexc.NotFound as exc:
            raise WarehouseError(f"{what}: not found in project {self.project}: {exc}") from exc
        except Exception as exc:
            kind = "still failing after retries" if is_transient(exc) else "failed"
            raise WarehouseError(f"{what}: {kind}: {type(exc).__name__}: {exc}") from exc

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
        self, dataset: str, tables: Sequence[str]
    ) -> dict[str, tuple[PartitionState, ...]]:
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
        if self._partition_times:
            try:
                data = self._partitions_query(dataset, names, "last_modified_time")
            except WarehouseError as exc:
                if not isinstance(exc.__cause__, gexc.BadRequest) or (
                    "last_modified_time" not in str(exc)
                ):
                    raise
                log.warning("bigquery: %s; partitions take their table's last-modified time", exc)
                self._partition_times = False
        if data is None:
            data = self._partitions_query(dataset, names, "NULL")
            table_times = {n: s.last_modified for n, s in self.states(dataset, names).items()}
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
        return {name: tuple(states) for name, states in out.items()}

    def _partitions_query(self, dataset: str, names: Sequence[str], modified: str) -> pa.Table:
        from google.cloud.bigquery import ArrayQueryParameter, QueryJobConfig

        sql = (
            f"SELECT table_name, partition_id, total_rows, {modified} AS last_modified_time "
            f"FROM `{self.project}.{dataset}.INFORMATION_SCHEMA.PARTITIONS` "
            "WHERE table_name IN UNNEST(@tables) ORDER BY table_name, partition_id"
        )
        config = QueryJobConfig(query_parameters=[ArrayQueryParameter("tables", "STRING", names)])

        def query() -> pa.Table:
            result = self.client.query_and_wait(
                sql, job_config=config, location=self.location, retry=None, job_retry=None
            )
            return result.to_arrow(create_bqstorage_client=False)

        return self._call(f"{dataset}.INFORMATION_SCHEMA.PARTITIONS", query)

    def read(
        self, dataset: str, table: str, columns: Sequence[str], window: DateRange
    ) -> TableRead:
        """One Storage Read session: only `columns` and the window's rows leave BigQuery (column
        projection and the row restriction are applied server-side, so the bytes billed are those
        of the selected columns); streams are read in parallel and sorted by the key in Arrow,
        since Storage Read does not order rows."""
        from google.cloud.bigquery_storage_v1 import types

        what = f"{dataset}.{table}"
        columns = list(dict.fromkeys(columns))
        if KEY not in columns:
            columns.insert(0, KEY)
        request = types.ReadSession(
            table=f"projects/{self.project}/datasets/{dataset}/tables/{table}",
            data_format=types.DataFormat.ARROW,
            read_options=types.ReadSession.TableReadOptions(
                selected_fields=columns, row_restriction=row_restriction(window)
            ),
        )
        session = self._call(
            what,
            lambda: self.read_client.create_read_session(
                parent=f"projects/{self.project}",
                read_session=request,
                max_stream_count=self.max_read_streams,
                retry=None,
                timeout=self.rpc_timeout_s,
            ),
        )
        schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise WarehouseError(f"{what}: no column(s) {', '.join(missing)}")
        streams = [s.name for s in session.streams]
        results: list[tuple[list[pa.RecordBatch], int]]
        if len(streams) <= 1:
            results = [self._read_stream(what, name, schema) for name in streams]
        else:
            with ThreadPoolExecutor(
                max_workers=min(len(streams), self.max_read_streams),
                thread_name_prefix="bq-read",
            ) as pool:
                results = list(
                    pool.map(lambda name: self._read_stream(what, name, schema), streams)
                )
        batches = [b for stream_batches, _ in results for b in stream_batches]
        data = pa.Table.from_batches(batches, schema=schema).select(columns)
        data, _ = by_key(data, what, WarehouseError)
        scanned = int(session.estimated_total_bytes_scanned or 0)
        # Sessions report the bytes they bill; where none is reported (an emulator), the Arrow
        # bytes received stand in for it.
        bytes_read = scanned or sum(n for _, n in results)
        return TableRead(data=data.combine_chunks(), bytes_read=bytes_read)

    def _read_stream(
        self, what: str, stream: str, schema: pa.Schema
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
                with self._lock:
                    self._resumes.append((stream, offset))
                log.info("bigquery: %s: resuming stream %s at row %d", what, stream, offset)
            responses = self.read_client.read_rows(
                read_stream=stream, offset=offset, retry=None, timeout=self.stream_timeout_s
            )
            for response in responses:
                payload = response.arrow_record_batch.serialized_record_batch
                if not payload:
                    continue
                # Kept only once decoded whole: the offset counts complete batches only.
                batches.append(pa.ipc.read_record_batch(pa.py_buffer(payload), schema))
                received += len(payload)
            return batches, received

        return self._call(what, attempt)

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
        compression: str = "ZSTD",
    ) -> ExportResult:
        """Export a whole table as parquet to GCS with an extract job (no scan charge).

        `destination_uri` may hold one `*` for sharded output (required above 1 GB). The files
        hold every column, `pair` included, in no particular row order: the caller drops, filters
        and sorts, as `read()` does server-side.
        """
        what = f"{dataset}.{table}"
        ref = bigquery.TableReference(bigquery.DatasetReference(self.project, dataset), table)
        config = bigquery.ExtractJobConfig(
            destination_format=bigquery.DestinationFormat.PARQUET, compression=compression
        )
        started = time.perf_counter()

        def run() -> bigquery.ExtractJob:
            job = self.client.extract_table(
                ref, destination_uri, job_config=config, location=self.location, retry=None
            )
            job.result(retry=None, timeout=self.rpc_timeout_s)
            return job

        job = self._call(what, run)
        return ExportResult(
            job_id=job.job_id,
            destination_uri=destination_uri,
            file_counts=tuple(int(n) for n in job.destination_uri_file_counts or ()),
            seconds=time.perf_counter() - started,
        )

    def export_table(
        self, dataset: str, table: str, columns: Sequence[str], staging_uri: str
    ) -> TableRead:
        """The whole table through an extract job (free; a Storage Read bills the bytes of the
        selected columns): parquet shards under `staging_uri`, read back, the `columns` selected
        and sorted by the key; the shards are deleted afterwards, whatever the outcome."""
        what = f"{dataset}.{table}"
        columns = list(dict.fromkeys(columns))
        if KEY not in columns:
            columns.insert(0, KEY)
        # A folder of its own per export: shards left by an export that was killed are never
        # read together with this one's.
        folder = f"{dataset}.{table}/{uuid.uuid4().hex[:16]}"
        staging = self._staging(staging_uri)
        try:
            self.export(dataset, table, f"{staging_uri.rstrip('/')}/{folder}/*.parquet")
            shards = sorted(k for k in staging.list(folder) if k.endswith(".parquet"))
            if not shards:
                raise WarehouseError(f"{what}: the export wrote no files under {staging_uri}")
            with tempfile.TemporaryDirectory(prefix="bqx-export-") as cache:
                parts = [self._read_shard(what, staging, k, Path(cache), columns) for k in shards]
        finally:
            for key in staging.list(folder):
                staging.delete(key)
        data = pa.concat_tables(parts).select(columns)
        data, _ = by_key(data, what, WarehouseError)
        return TableRead(data=data.combine_chunks(), bytes_read=0)

    def _staging(self, staging_uri: str) -> Storage:
        if self.gcs_local_root and staging_uri.startswith("gs://"):
            return open_storage(
                Path(self.gcs_local_root) / staging_uri.removeprefix("gs://"), durable=False
            )
        return open_storage(staging_uri, durable=False)

    @staticmethod
    def _read_shard(
        what: str, staging: Storage, key: str, cache: Path, columns: Sequence[str]
    ) -> pa.Table:
        path = staging.fetch(key, cache)
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise WarehouseError(f"{what}: no column(s) {', '.join(missing)}")
        # Only the wanted columns are decoded (`pair` and the rest stay on disk).
        return pq.read_table(path, columns=list(columns))

    def close(self) -> None:
        self.client.close()
        transport: Any = getattr(self.read_client, "_transport", None)
        if transport is not None:
            transport.close()


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
