"""Whole tables through extract jobs to GCS (not billed as a scan), read back from the files."""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.keys import by_key
from bqx_assets.core.layout import KEY
from bqx_assets.core.storage import Storage, open_storage
from bqx_assets.core.warehouse.base import Cut, TableRead
from bqx_assets.core.warehouse.bigquery.retry import is_transient

if TYPE_CHECKING:
    from bqx_assets.core.warehouse.bigquery.warehouse import BigQueryWarehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """An extract job's outcome: where the parquet files are and what the job reported."""

    job_id: str
    destination_uri: str
    file_counts: tuple[int, ...]
    seconds: float
    inserts: int = 1
    """jobs.insert calls this export made (more than one only after a transient error)."""
    existed: bool = False
    """The job existed before this export (an insert answered 409): it was only polled."""


class ExportQuotaError(WarehouseError):
    """BigQuery refused an extract job for quota (its daily export limits): not retried."""


EXPORT_QUOTAS = "https://cloud.google.com/bigquery/quotas#export_jobs"
"""BigQuery's extract job quotas (bytes and jobs per day)."""

_JOB_GENERATIONS = 3
"""Jobs one export may run under its derived id and its successors (`_r2`, `_r3`): a later one
only where the earlier job finished and its files were already read and deleted."""


def export_job_id(project: str, dataset: str, table: str, cut: Cut | None) -> str:
    """The extract job id of a table's export at a cut: derived from them, so a retry of the
    same export (an attempt that timed out, a step run again at the same cut) finds the same
    job instead of starting a second one. Without a cut there is no run identity to derive
    it from: a random one, still polled by id within the export. Job ids take letters,
    digits, `_` and `-`, up to 1,024 characters
    (https://cloud.google.com/bigquery/docs/running-jobs#generate-jobid)."""
    if cut is None:
        tag = uuid.uuid4().hex[:16]
    else:
        at = cut.at.astimezone(UTC).isoformat()
        tag = hashlib.sha256(f"{project}/{dataset}/{table}@{at}".encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", f"{dataset}_{table}")[:200]
    return f"bqx_export_{safe}_{tag}"


def _quota_refusal(exc: BaseException) -> bool:
    reasons = {e.get("reason") for e in (getattr(exc, "errors", None) or []) if isinstance(e, dict)}
    return isinstance(exc, gexc.GoogleAPICallError) and "quotaExceeded" in reasons


def _export_transient(exc: BaseException) -> bool:
    """Transient as any call, except a `quotaExceeded` refusal: an extract job's quotas are
    per day (EXPORT_QUOTAS) and pass at the earliest the next day."""
    return is_transient(exc) and not _quota_refusal(exc)


class _Running(WarehouseError):
    """The job is still running after a poll (not an error: poll again)."""


def export(
    wh: BigQueryWarehouse,
    dataset: str,
    table: str,
    destination_uri: str,
    *,
    job_id: str | None = None,
    compression: str = "ZSTD",
) -> ExportResult:
    """Export a whole table as parquet to GCS with one extract job (no scan charge), created
    once under `job_id` and polled by id until done.

    `job.result(timeout=)` raising does not stop the job: the timeout is the polling's, "If
    the operation does not complete within this timeout an exception will be thrown"
    (google/api_core/future/polling.py, `PollingFuture.result`), and nothing cancels the job
    (google/cloud/bigquery/job/base.py, `_AsyncJob.result`). So a poll that times out, or a
    transient error, is followed by `get_job(job_id)` and more polling, never by a second
    jobs.insert; an insert answered 409 (an earlier attempt created it) polls the job that
    exists. The job is cancelled (`cancel_job`) when the export gives up: polling past
    `wh.export_timeout_s`, or an error. A `quotaExceeded` refusal is one ExportQuotaError,
    not retried.

    `destination_uri` may hold one `*` for sharded output (required above 1 GB). The files
    hold every column, `pair` included, in no particular row order: the caller drops, filters
    and sorts, as `read()` does server-side.
    """
    what = f"{dataset}.{table}"
    job_id = job_id or export_job_id(wh.project, dataset, table, None)
    ref = bigquery.TableReference(bigquery.DatasetReference(wh.project, dataset), table)
    config = bigquery.ExtractJobConfig(
        destination_format=bigquery.DestinationFormat.PARQUET, compression=compression
    )
    location = wh.location_of(dataset)
    started = time.perf_counter()
    inserts = 0
    existed = created = False

    def insert() -> None:
        nonlocal inserts, existed, created
        inserts += 1
        try:
            wh.client.extract_table(
                ref, destination_uri, job_id=job_id, job_config=config,
                location=location, retry=None, timeout=wh.rpc_timeout_s,
            )  # fmt: skip
            created = True
        except gexc.Conflict:
            existed = True
            log.info("bigquery: %s: extract job %s exists; polling it", what, job_id)

    def poll() -> bigquery.ExtractJob:
        job = wh.client.get_job(
            job_id, project=wh.project, location=location, retry=None, timeout=wh.rpc_timeout_s
        )
        try:
            job.result(retry=None, timeout=wh.poll_timeout_s)
        except TimeoutError:
            raise _Running(job_id) from None
        return job  # type: ignore[return-value]

    try:
        try:
            wh._call(what, insert, transient=_export_transient)
            deadline = time.monotonic() + wh.export_timeout_s
            while True:
                try:
                    job = wh._call(what, poll, transient=_export_transient)
                    break
                except _Running:
                    if time.monotonic() >= deadline:
                        raise WarehouseError(
                            f"{what}: extract job {job_id} still running after "
                            f"{wh.export_timeout_s:.0f} s; cancelled"
                        ) from None
        except WarehouseError as exc:
            if exc.__cause__ is not None and _quota_refusal(exc.__cause__):
                raise ExportQuotaError(
                    f"{what}: BigQuery refused the extract job for quota ({exc.__cause__}); "
                    f"not retried: export quotas are per day ({EXPORT_QUOTAS}). Extract in "
                    "read mode (Storage Read, billed) or wait for the quota"
                ) from exc.__cause__
            raise
    except BaseException:
        if created or existed:
            wh.cancel_job(what, job_id, location)
        raise
    return ExportResult(
        job_id=job_id,
        destination_uri=destination_uri,
        file_counts=tuple(int(n) for n in job.destination_uri_file_counts or ()),
        seconds=time.perf_counter() - started,
        inserts=inserts,
        existed=existed,
    )


def export_table(
    wh: BigQueryWarehouse,
    dataset: str,
    table: str,
    columns: Sequence[str],
    staging_uri: str,
    *,
    cut: Cut | None = None,
) -> TableRead:
    """The whole table through an extract job (free; a Storage Read bills the bytes of the
    selected columns): parquet shards under `staging_uri`, in a folder named by the job's id
    and written by that job only, read back, the `columns` selected and sorted by the key;
    the shards are deleted afterwards, whatever the outcome.

    An extract job cannot take a snapshot time (ExtractJobConfiguration has none:
    https://cloud.google.com/bigquery/docs/reference/rest/v2/Job#jobconfigurationextract),
    so with a `cut` the rows exported are filtered to keys at or before `cut.at`: minutes
    appended after the cut are left out, as a read session as of the cut leaves them out.
    A row written after the cut with an earlier key (a correction of the past) is not: only
    a read session (`read`, with its snapshot time) reads a table exactly as of the cut."""
    what = f"{dataset}.{table}"
    columns = list(dict.fromkeys(columns))
    if KEY not in columns:
        columns.insert(0, KEY)
    staging = _staging(wh, staging_uri)
    base = export_job_id(wh.project, dataset, table, cut)
    for generation in range(1, _JOB_GENERATIONS + 1):
        job_id = base if generation == 1 else f"{base}_r{generation}"
        # A folder of its own per job: shards left by a job that was killed are never read
        # together with another job's.
        folder = f"{dataset}.{table}/{job_id}"
        try:
            done = export(wh, dataset, table, f"{staging_uri.rstrip('/')}/{folder}/*.parquet",
                          job_id=job_id)  # fmt: skip
            shards = sorted(k for k in staging.list(folder) if k.endswith(".parquet"))
            if not shards:
                if done.existed and generation < _JOB_GENERATIONS:
                    # The job existed and finished before: its files were read and deleted.
                    continue
                raise WarehouseError(f"{what}: the export wrote no files under {staging_uri}")
            with tempfile.TemporaryDirectory(prefix="bqx-export-") as cache:
                parts = [_read_shard(what, staging, k, Path(cache), columns) for k in shards]
        finally:
            for key in staging.list(folder):
                staging.delete(key)
        break
    data = pa.concat_tables(parts).select(columns)
    if cut is not None:
        data = data.filter(pc.less_equal(data[KEY], pa.scalar(cut.at, data.schema.field(KEY).type)))
    data, _ = by_key(data, what, WarehouseError)
    return TableRead(data=data.combine_chunks(), bytes_read=0)


def _staging(wh: BigQueryWarehouse, staging_uri: str) -> Storage:
    if wh.gcs_local_root and staging_uri.startswith("gs://"):
        return open_storage(
            Path(wh.gcs_local_root) / staging_uri.removeprefix("gs://"), durable=False
        )
    return open_storage(staging_uri, durable=False)


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
