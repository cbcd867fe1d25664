"""Whole tables through extract jobs to GCS (not billed as a scan), read back from the files."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from google.cloud import bigquery

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.keys import by_key
from bqx_assets.core.layout import KEY
from bqx_assets.core.storage import Storage, open_storage
from bqx_assets.core.warehouse.base import TableRead

if TYPE_CHECKING:
    from bqx_assets.core.warehouse.bigquery.warehouse import BigQueryWarehouse


@dataclass(frozen=True)
class ExportResult:
    """An extract job's outcome: where the parquet files are and what the job reported."""

    job_id: str
    destination_uri: str
    file_counts: tuple[int, ...]
    seconds: float


def export(
    wh: BigQueryWarehouse,
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
    ref = bigquery.TableReference(bigquery.DatasetReference(wh.project, dataset), table)
    config = bigquery.ExtractJobConfig(
        destination_format=bigquery.DestinationFormat.PARQUET, compression=compression
    )
    started = time.perf_counter()

    def run() -> bigquery.ExtractJob:
        job = wh.client.extract_table(
            ref, destination_uri, job_config=config, location=wh.location, retry=None
        )
        job.result(retry=None, timeout=wh.rpc_timeout_s)
        return job

    job = wh._call(what, run)
    return ExportResult(
        job_id=job.job_id,
        destination_uri=destination_uri,
        file_counts=tuple(int(n) for n in job.destination_uri_file_counts or ()),
        seconds=time.perf_counter() - started,
    )


def export_table(
    wh: BigQueryWarehouse, dataset: str, table: str, columns: Sequence[str], staging_uri: str
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
    staging = _staging(wh, staging_uri)
    try:
        export(wh, dataset, table, f"{staging_uri.rstrip('/')}/{folder}/*.parquet")
        shards = sorted(k for k in staging.list(folder) if k.endswith(".parquet"))
        if not shards:
            raise WarehouseError(f"{what}: the export wrote no files under {staging_uri}")
        with tempfile.TemporaryDirectory(prefix="bqx-export-") as cache:
            parts = [_read_shard(what, staging, k, Path(cache), columns) for k in shards]
    finally:
        for key in staging.list(folder):
            staging.delete(key)
    data = pa.concat_tables(parts).select(columns)
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
