"""local-bigquery on 127.0.0.1 as a pytest fixture, and proxies that inject transient faults."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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

from bqx_assets.core.bigquery import BigQueryWarehouse, RetrySettings
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY

REPO = Path(__file__).resolve().parents[2]
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


def ensure_emulator_venv() -> Path:
    """The emulator venv, created or updated by the setup script (a no-op when its stamp matches
    the pinned versions); skips the test when it cannot be created (no Python 3.13 or no
    package index on this machine), except under CI (`CI` set), where that is a failure: a
    green CI must have run the emulator tests."""
    venv = emulator_venv()
    give_up = pytest.fail if os.environ.get("CI") else pytest.skip
    try:
        done = subprocess.run(
            ["bash", str(SETUP_SCRIPT)],
            env={**os.environ, "BQX_BQ_EMULATOR_VENV": str(venv)},
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        give_up(f"BigQuery emulator venv not created in {SETUP_TIMEOUT_S:.0f} s at {venv}")
    if done.returncode != 0 or not (venv / "bin" / "local-bigquery").exists():
        give_up(
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


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """local-bigquery for the whole session; stopped at the end."""
    emulator = start_emulator(tmp_path_factory.mktemp("bigquery-emulator"))
    try:
        yield emulator
    finally:
        emulator.stop()


# -- fault injection -------------------------------------------------------------------------
class _Server(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.faults_injected = 0
        self.forwarded = 0

    def take_fault(self, budget: int) -> bool:
        """Whether this request or connection gets a fault (the first `budget` ones do)."""
        with self.lock:
            if self.faults_injected < budget:
                self.faults_injected += 1
                return True
            self.forwarded += 1
            return False


class HttpFaultProxy(_Server):
    """An HTTP reverse proxy that answers the first `faults` requests with `status` (a
    BigQuery-shaped JSON error) and forwards everything else to `upstream`. With `path_contains`,
    only requests whose path contains it get faults."""

    def __init__(
        self,
        upstream: str,
        faults: int,
        status: int = 503,
        *,
        reason: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        super().__init__()
        self.upstream = upstream.removeprefix("http://")
        self.faults = faults
        self.status = status
        self.reason = reason or ("backendError" if status >= 500 else "rateLimitExceeded")
        self.path_contains = path_contains
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                wanted = proxy.path_contains is None or proxy.path_contains in self.path
                if wanted and proxy.take_fault(proxy.faults):
                    payload = (
                        f'{{"error": {{"code": {proxy.status}, "message": "injected fault",'
                        f' "errors": [{{"reason": "{proxy.reason}", "message": "injected"}}]}}}}'
                    ).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpFaultProxy(_Server):
    """A TCP proxy (for gRPC) that drops the first `drops` connections: it accepts them, then
    resets them once the client has sent its first bytes. Later connections are piped through.

    With `cut_after_bytes`, a dropped connection is instead piped through until the server has
    sent that many bytes, then ended in the middle of a streamed response: the client receives
    exactly those bytes, then the end of the connection. With `cut_with_reset` it is reset
    instead, which also discards what still sits in the proxy's send buffer, so how much of the
    response arrives depends on how fast the client reads. The server's side is reset.
    """

    def __init__(
        self,
        upstream: str,
        drops: int,
        *,
        cut_after_bytes: int | None = None,
        cut_with_reset: bool = False,
    ) -> None:
        super().__init__()
        self.cut_after_bytes = cut_after_bytes
        self.cut_with_reset = cut_with_reset
        self.cuts = 0
        """Connections cut mid-response (ended, or reset with `cut_with_reset`)."""
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.drops = drops
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []

    def run(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        fault = self.take_fault(self.drops)
        if fault and self.cut_after_bytes is None:
            with contextlib.suppress(OSError):
                client.recv(65536)
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        limit = self.cut_after_bytes if fault else None
        threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()
        self._pipe(client, upstream, None)

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    with self.lock:
                        self.cuts += 1
                    if self.cut_with_reset:
                        _reset(dst)
                    else:
                        # Every byte sent so far, then the end of the connection (FIN).
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                    _reset(src)
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> TcpFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    """Drop a connection with RST (SO_LINGER 0), the way a crashed peer or a load balancer does.

    shutdown() first: close() alone leaves the connection open while another thread is blocked
    in recv() on it, and the client would wait for data that never comes.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# -- loading: seeding the emulator's datasets ---------------------------------------------
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
