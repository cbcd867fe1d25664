"""local-bigquery on 127.0.0.1: `start_emulator(folder)`, its clients, and tables loaded into it."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Set before anything imports google-auth: without it google-auth probes the GCE metadata server.
os.environ.setdefault("NO_GCE_CHECK", "True")


import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import BigQueryReadClient
from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
    BigQueryReadGrpcTransport,
)

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse, RetrySettings

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / "scripts" / "setup_bigquery_emulator.sh"
EMULATOR_PROJECT = "bqx-ml"
READY_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 600.0


def emulator_venv() -> Path:
    """Where `scripts/setup_bigquery_emulator.sh` puts the emulator's Python 3.13 environment."""
    return Path(os.environ.get("BQX_BQ_EMULATOR_VENV", REPO / ".emulators" / "bigquery-venv"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class BigQueryEmulator:
    """A running local-bigquery: REST and Storage Read endpoints and client factories."""

    rest_endpoint: str
    """`http://127.0.0.1:PORT`: the `api_endpoint` of `bigquery.Client`."""
    grpc_endpoint: str
    """`127.0.0.1:PORT`: the Storage Read API, plain gRPC."""
    project: str
    data_dir: Path
    """The emulator's storage: an extract job to `gs://b/p` writes `data_dir/gcs/b/p`."""
    process: subprocess.Popen[bytes]
    log: Path
    _clients: list[Any] = field(default_factory=list)

    def client(self, endpoint: str | None = None) -> bigquery.Client:
        """A BigQuery client on the emulator (or on a proxy in front of it)."""
        client = bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint or self.rest_endpoint},
        )
        self._clients.append(client)
        return client

    def read_client(self, endpoint: str | None = None) -> BigQueryReadClient:
        """A Storage Read client on an insecure channel to the emulator (or a proxy)."""
        channel = grpc.insecure_channel(endpoint or self.grpc_endpoint)
        return BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))

    def warehouse(
        self,
        features_dataset: str,
        targets_dataset: str,
        *,
        api_endpoint: str | None = None,
        read_endpoint: str | None = None,
        **kwargs: Any,
    ) -> BigQueryWarehouse:
        """A BigQueryWarehouse on the emulator; retries are quick so that fault tests stay fast."""
        kwargs.setdefault("retry", RetrySettings(attempts=8, initial_s=0.1, maximum_s=1.0))
        return BigQueryWarehouse(
            self.project,
            features_dataset,
            targets_dataset,
            api_endpoint=api_endpoint or self.rest_endpoint,
            read_endpoint=read_endpoint or self.grpc_endpoint,
            **kwargs,
        )

    def dataset(self, prefix: str = "test") -> str:
        """A new empty dataset's id."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.client().create_dataset(f"{self.project}.{name}")
        return name

    def gcs_path(self, uri: str) -> Path:
        """The local file an extract job to `gs://...` wrote."""
        return self.data_dir / "gcs" / uri.removeprefix("gs://")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self.process.poll() is None:
            # The server runs in its own process group (uvicorn plus the gRPC server threads).
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class EmulatorUnavailable(RuntimeError):
    """The emulator's environment cannot be created on this machine (no Python 3.13, no
    package index)."""


def ensure_emulator_venv() -> Path:
    """The emulator venv, created or updated by the setup script (a no-op when its stamp matches
    the pinned versions); EmulatorUnavailable when it cannot be created."""
    venv = emulator_venv()
    try:
        done = subprocess.run(
            ["bash", str(SETUP_SCRIPT)],
            env={**os.environ, "BQX_BQ_EMULATOR_VENV": str(venv)},
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise EmulatorUnavailable(
            f"BigQuery emulator venv not created in {SETUP_TIMEOUT_S:.0f} s at {venv}"
        ) from None
    if done.returncode != 0 or not (venv / "bin" / "local-bigquery").exists():
        raise EmulatorUnavailable(
            f"BigQuery emulator venv could not be created at {venv} "
            f"(scripts/setup_bigquery_emulator.sh exit {done.returncode}): "
            f"{(done.stderr or done.stdout)[-1500:]}"
        )
    return venv


def _ready(rest: str, grpc_endpoint: str, project: str) -> bool:
    try:
        with urllib.request.urlopen(f"{rest}/bigquery/v2/projects/{project}/datasets", timeout=2):
            pass
    except (urllib.error.URLError, OSError):
        return False
    host, port = grpc_endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def start_emulator(data_dir: Path, project: str = EMULATOR_PROJECT) -> BigQueryEmulator:
    """Start local-bigquery on free 127.0.0.1 ports and wait until both APIs answer."""
    venv = ensure_emulator_venv()
    data_dir.mkdir(parents=True, exist_ok=True)
    rest_port, grpc_port = _free_port(), _free_port()
    while grpc_port == rest_port:
        grpc_port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        # A GCS emulator's address would send extract jobs there instead of to data_dir/gcs.
        if k not in ("STORAGE_EMULATOR_HOST", "GCS_LOCAL_ROOT", "VIRTUAL_ENV", "PYTHONPATH")
    }
    env.update(HOME=str(venv / "duckdb-home"), GCS_LOCAL_ROOT=str(data_dir / "gcs"))
    log = data_dir / "emulator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "local-bigquery"),
                "serve",
                "--host=127.0.0.1",
                f"--port={rest_port}",
                f"--grpc-port={grpc_port}",
                f"--project={project}",
                f"--data-dir={data_dir}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    emulator = BigQueryEmulator(
        rest_endpoint=f"http://127.0.0.1:{rest_port}",
        grpc_endpoint=f"127.0.0.1:{grpc_port}",
        project=project,
        data_dir=data_dir,
        process=process,
        log=log,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _ready(emulator.rest_endpoint, emulator.grpc_endpoint, project):
        if process.poll() is not None:
            raise RuntimeError(f"BigQuery emulator exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            emulator.stop()
            raise RuntimeError(
                f"BigQuery emulator not ready in {READY_TIMEOUT_S:.0f} s:\n{_tail(log)}"
            )
        time.sleep(0.1)
    return emulator


_ARROW_TO_BQ: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_timestamp, "TIMESTAMP"),
    (pa.types.is_floating, "FLOAT64"),
    (pa.types.is_integer, "INT64"),
    (pa.types.is_boolean, "BOOL"),
    (pa.types.is_string, "STRING"),
    (pa.types.is_large_string, "STRING"),
    (pa.types.is_date, "DATE"),
)


def bigquery_schema(schema: pa.Schema) -> list[bigquery.SchemaField]:
    """BigQuery columns for an Arrow schema of the warehouse's types."""
    fields = []
    for column in schema:
        for test, name in _ARROW_TO_BQ:
            if test(column.type):
                fields.append(bigquery.SchemaField(column.name, name, mode="NULLABLE"))
                break
        else:
            raise WarehouseError(f"column {column.name}: no BigQuery type for {column.type}")
    return fields


def load_tables(
    client: bigquery.Client,
    dataset: str,
    tables: Mapping[str, pa.Table],
    *,
    replace: bool = False,
) -> dict[str, int]:
    """Create the tables (partitioned by DATE(interval_time) where they have the key) and append
    the rows with a parquet load job; returns rows loaded per table. `replace` truncates first."""
    client.create_dataset(bigquery.Dataset(f"{client.project}.{dataset}"), exists_ok=True)
    loaded: dict[str, int] = {}
    for name, data in tables.items():
        ref = f"{client.project}.{dataset}.{name}"
        table = bigquery.Table(ref, schema=bigquery_schema(data.schema))
        if KEY in data.schema.names:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=KEY
            )
        # Created up front so the schema, not the parquet file, decides the column types.
        client.create_table(table, exists_ok=True)
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd")
        buffer.seek(0)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=(
                bigquery.WriteDisposition.WRITE_TRUNCATE
                if replace
                else bigquery.WriteDisposition.WRITE_APPEND
            ),
        )
        job = client.load_table_from_file(buffer, ref, job_config=config)
        job.result()
        loaded[name] = int(job.output_rows or 0)
    return loaded


def load_warehouse(
    client: bigquery.Client, embedded: Path, catalog: Catalog, pairs: Sequence[str]
) -> dict[str, int]:
    """The catalog's shared tables and `pairs`' own and targets tables, copied from the embedded
    warehouse at `embedded` into the emulator's datasets of the same names (as production has
    them); returns rows loaded per table. The emulator finds a table by listing every table it
    holds, so each load takes longer than the last: under 2 tables a second at first, about 400
    of the packaged catalog's 1,137 tables of three pairs in 5 minutes."""
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

    sources: dict[tuple[str, str], Sequence[str]] = {}
    for table in [*catalog.shared_tables(), *(t for p in pairs for t in catalog.tables_for(p))]:
        sources[table.dataset, table.name] = [KEY, *(c.name for c in table.columns)]
    for pair in pairs:
        targets = catalog.targets[pair]
        sources[targets.dataset, targets.name] = [KEY, *(c.name for c in targets.columns)]
    by_dataset: dict[str, dict[str, pa.Table]] = {}
    warehouse = EmbeddedWarehouse(embedded)
    try:
        for (dataset, name), columns in sources.items():
            data = warehouse.read(dataset, name, columns, DateRange()).data
            by_dataset.setdefault(dataset, {})[name] = data
    finally:
        warehouse.close()
    loaded: dict[str, int] = {}
    for dataset, tables in by_dataset.items():
        loaded |= load_tables(client, dataset, tables)
    return loaded
