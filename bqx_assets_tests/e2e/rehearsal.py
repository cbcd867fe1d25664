"""The production instance rehearsed: deploy/dagster.prod.yaml over a local PostgreSQL, the GCS
emulator and a run launcher of processes; what its own records say about a backfill."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bqx_assets.core.costs import JOB
from bqx_assets_tests.e2e.conftest import (
    BIN,
    REPO,
    Deployment,
    free_port,
    start_deployment,
    stop_processes,
)
from bqx_assets_tests.e2e.launcher import CgroupRunLauncher, cgroup_usable

if TYPE_CHECKING:
    from emulators.bigquery import BigQueryEmulator

PROD = REPO / "deploy" / "dagster.prod.yaml"
MAX_CONCURRENT_RUNS = 2
"""Production's 8 runs at once, scaled to 2 cores."""
BIGQUERY_POOL_LIMIT = 1
"""Production's 4 warehouse-reading steps at once (half its runs), scaled the same way."""
MONITOR_POLL_SECONDS = 2
"""Production polls run workers every 120 s; the rehearsal's crashes are seen within seconds."""
LOG_PREFIX = "dagster-logs"
WAREHOUSE_STEPS = ("shared_checkpoints", "pair_checkpoints")


def postgres_bindir() -> Path:
    """Debian's postgresql package (scripts/install_postgres.sh), newest major first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise RuntimeError("no PostgreSQL server: run scripts/install_postgres.sh")


@dataclass
class Postgres:
    """A PostgreSQL server of its own on 127.0.0.1 (run as the `postgres` user when this is root,
    since initdb and postgres refuse to run as root)."""

    folder: Path
    port: int
    bindir: Path = field(default_factory=postgres_bindir)
    user: str = "dagster"
    db: str = "dagster"

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(
            self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                           "--auth=trust", "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -F"  # -F: no fsync, a test
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                           "-l", str(self.folder / "postgres.log"), "-w", "start"),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                           "stop"),
            check=False, capture_output=True,
        )  # fmt: skip

    def create_db(self) -> None:
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres"
        )
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {self.db}")
        connection.close()

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.prod.yaml reads its storage from."""
        return {
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": "rehearsal",  # trust auth: any password is accepted
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": self.db,
            "DAGSTER_PG_PORT": str(self.port),
        }


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A server on a data folder of its own under the temp folder (the postgres user must reach
    it, which pytest's private temp folders do not let it), removed when the server stops."""
    folder = Path(tempfile.mkdtemp(prefix="bqx-pg-"))
    try:
        server = Postgres(folder, free_port())
        server.init()
        server.start()
        try:
            server.create_db()
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def instance_config(memory_limit_bytes: int, cgroup_parent: str) -> dict[str, Any]:
    """deploy/dagster.prod.yaml with the rehearsal's run launcher, scaled to 2 cores."""
    config = yaml.safe_load(PROD.read_text())
    config["run_launcher"] = {
        "module": CgroupRunLauncher.__module__,
        "class": CgroupRunLauncher.__name__,
        "config": {"memory_limit_bytes": memory_limit_bytes, "cgroup_parent": cgroup_parent},
    }
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    config["run_monitoring"]["poll_interval_seconds"] = MONITOR_POLL_SECONDS
    # A run worker killed while it loads the code never reports STARTED: only this fails it.
    config["run_monitoring"]["start_timeout_seconds"] = 180
    config["run_monitoring"]["free_slots_after_run_end_seconds"] = MONITOR_POLL_SECONDS
    config["concurrency"]["runs"]["max_concurrent_runs"] = MAX_CONCURRENT_RUNS
    config["concurrency"]["pools"]["default_limit"] = BIGQUERY_POOL_LIMIT
    config["nux"] = {"enabled": False}
    return config


@dataclass
class Rehearsal(Deployment):
    postgres: Postgres | None = None
    staging: str = ""
    output: str = ""
    log_bucket: str = ""
    cgroup_parent: str = ""
    memory_limit: str | None = None
    """None when each run is held to JOB's memory; else why it could not be."""
    gcs: Any = None
    bigquery_source: Path | None = None
    """The embedded warehouse the BigQuery emulator was loaded from, moved out of the runs'
    reach (None: the runs read the embedded warehouse)."""

    def instance(self) -> Any:
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.root))

    def blobs(self, bucket: str, prefix: str = "") -> list[str]:
        return [b.name for b in self.gcs.client().list_blobs(bucket, prefix=prefix)]


@contextlib.contextmanager
def rehearsal(
    work: Path,
    pairs: list[str],
    rows: int,
    *,
    catalog: Path | None = None,
    bigquery: bool = False,
) -> Iterator[Rehearsal]:
    """Postgres, the GCS emulator, the warehouse, shared checkpoints, then the webserver and the
    daemon: the environment variables set here are this process's too while it lasts, so that
    `Rehearsal.instance()` reads the same Postgres. `catalog`: a catalog file in place of the
    packaged one (the graph's and the runs'). `bigquery`: the production resources
    (`BQX_ENV=prod`), the warehouse's tables copied into the BigQuery emulator and read from
    there by the production `BigQueryWarehouse`."""
    from emulators.gcs import run_gcs_emulator

    work.mkdir(parents=True, exist_ok=True)
    root = work / "home"
    root.mkdir()
    # Cloud Run's filesystem is memory: the runs' local folders on a tmpfs are charged to them.
    local = Path(tempfile.mkdtemp(prefix="bqx-rehearsal-", dir="/dev/shm"))
    cgroup_parent = f"bqx-rehearsal-{os.getpid()}"
    why_not = cgroup_usable(cgroup_parent)
    limit = 0 if why_not else int(JOB.memory_gib * 2**30)
    saved = dict(os.environ)
    with (
        postgres_server() as postgres,
        run_gcs_emulator(work / "gcs") as gcs,
        _bigquery_emulator(work / "bigquery", bigquery) as emulator,
    ):
        staging, output, logs = gcs.create_bucket(), gcs.create_bucket(), gcs.create_bucket()
        config = instance_config(limit, cgroup_parent)
        # Logs are staged on the runs' local folder (memory, as in a container), not left in /tmp.
        config["compute_logs"]["config"]["local_dir"] = str(local / "compute-logs")
        (root / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BQX_", "DAGSTER_"))}
        env.update({k: v for k, v in gcs.env().items() if k not in os.environ})
        env.update(postgres.env())
        env.update(
            DAGSTER_HOME=str(root),
            NO_GCE_CHECK="True",
            BQX_DAGSTER_LOG_BUCKET=logs,
            BQX_ENV="local",
            BQX_WAREHOUSE_PATH=str(work / "warehouse.duckdb"),
            BQX_CHECKPOINT_ROOT=f"gs://{staging}/checkpoints",
            BQX_OUTPUT_ROOT=f"gs://{output}",
            BQX_CACHE_DIR=str(local / "cache" / "checkpoints"),
            BQX_OUTPUT_CACHE_DIR=str(local / "cache" / "output"),
            BQX_FRAME_DIR=str(local / "frames"),
            BQX_WORKDIR=str(local / "work"),
            TMPDIR=str(local),
            BQX_MIN_ROWS="100",
            BQX_EXTRACT_THREADS="2",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONPATH=str(REPO),  # the launcher's module, for the daemon
            PYTHONUNBUFFERED="1",
        )
        if catalog is not None:
            env["BQX_CATALOG_PATH"] = str(catalog)
        if emulator is not None:
            env.update(
                BQX_ENV="prod",
                BQX_BQ_PROJECT=emulator.project,
                BQX_BQ_API_ENDPOINT=emulator.rest_endpoint,
                BQX_BQ_READ_ENDPOINT=emulator.grpc_endpoint,
                BQX_BQ_READ_STREAMS="1",
            )
        os.environ.update(env)
        port = free_port()
        deployment = Rehearsal(
            root, env, f"http://127.0.0.1:{port}", postgres=postgres, staging=staging,
            output=output, log_bucket=logs, cgroup_parent=cgroup_parent, memory_limit=why_not,
            gcs=gcs,
        )  # fmt: skip
        try:
            made = None
            if emulator is not None:
                made = partial(_copy_to_bigquery, deployment, emulator, pairs)
            start_deployment(deployment, pairs, rows, made=made)
            yield deployment
        finally:
            stop_processes(deployment.processes)
            _kill_workers(root)
            os.environ.clear()
            os.environ.update(saved)
            shutil.rmtree(local, ignore_errors=True)
            _remove_cgroups(cgroup_parent)


@contextlib.contextmanager
def _bigquery_emulator(folder: Path, wanted: bool) -> Iterator[BigQueryEmulator | None]:
    if not wanted:
        yield None
        return
    from emulators.bigquery import start_emulator

    emulator = start_emulator(folder)
    try:
        yield emulator
    finally:
        emulator.stop()


def _copy_to_bigquery(
    deployment: Rehearsal, emulator: BigQueryEmulator, pairs: list[str], warehouse: Path
) -> None:
    """The embedded warehouse's tables of the deployment's catalog, loaded into the emulator's
    datasets of the catalog's names."""
    from bqx_assets.core.catalog import Catalog
    from emulators.bigquery import load_warehouse

    clock = time.monotonic()
    catalog = Catalog.load(deployment.env.get("BQX_CATALOG_PATH"))
    loaded = load_warehouse(emulator.client(), warehouse, catalog, pairs)
    # Out of the runs' reach: only the emulator holds the tables now.
    deployment.bigquery_source = warehouse.rename(warehouse.with_suffix(".in-bigquery.duckdb"))
    deployment.figures["bigquery_tables"] = len(loaded)
    deployment.figures["bigquery_load_seconds"] = round(time.monotonic() - clock, 1)


def _kill_workers(root: Path) -> None:
    """Run workers still alive after the daemon stopped (a failed test's)."""
    import signal

    from bqx_assets_tests.e2e.launcher import PID_TAG

    with contextlib.suppress(Exception):
        import dagster as dg

        with dg.DagsterInstance.from_config(str(root)) as instance:
            for run in instance.get_runs():
                pid = run.tags.get(PID_TAG)
                if pid and run.status.value in {"STARTED", "STARTING", "CANCELING"}:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(int(pid), signal.SIGKILL)


def _remove_cgroups(parent: str) -> None:
    from bqx_assets_tests.e2e.launcher import CGROUP_ROOT

    top = CGROUP_ROOT / parent
    if not top.exists():
        return
    for child in top.iterdir():
        if child.is_dir():
            # A worker killed a moment ago may not have left its cgroup yet.
            deadline = time.monotonic() + 10
            while child.exists() and time.monotonic() < deadline:
                try:
                    child.rmdir()
                except OSError:
                    time.sleep(0.2)
    with contextlib.suppress(OSError):
        top.rmdir()


@dataclass
class RunFacts:
    """One run as the instance recorded it in Postgres."""

    run_id: str
    pair: str
    status: str
    start: float
    end: float
    parent: str | None
    steps: dict[str, tuple[float, float | None]]
    failures: list[str]
    checks: dict[str, bool]
    published: bool
    step_metadata: dict[str, list[dict[str, Any]]]
    """step key -> the metadata of each of its materializations."""
    log_files: dict[str, list[str]]
    """file_key -> the step keys whose stdout/stderr it holds (LOGS_CAPTURED events)."""
    warnings: list[str] = field(default_factory=list)
    """The messages the run's steps logged as warnings."""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def run_facts(
    rehearsal: Rehearsal, backfill_id: str | None = None, *, created_after: float | None = None
) -> list[RunFacts]:
    """Every run of the backfill (retries included: they keep its tags), or every run created
    after the `created_after` timestamp, from the instance."""
    import dagster as dg

    from bqx_assets_tests.e2e.conftest import RANGE_START_TAG

    out: list[RunFacts] = []
    kinds = dg.DagsterEventType
    if backfill_id is not None:
        runs_filter = dg.RunsFilter(tags={"dagster/backfill": backfill_id})
    else:
        assert created_after is not None
        runs_filter = dg.RunsFilter(created_after=datetime.fromtimestamp(created_after, UTC))
    with rehearsal.instance() as instance:
        records = instance.get_run_records(runs_filter)
        for record in records:
            run = record.dagster_run
            pair = run.tags.get("dagster/partition") or run.tags.get(RANGE_START_TAG, "")
            steps: dict[str, tuple[float, float | None]] = {}
            failures: list[str] = []
            checks: dict[str, bool] = {}
            metadata: dict[str, list[dict[str, Any]]] = {}
            logs: dict[str, list[str]] = {}
            published = False
            warnings: list[str] = []
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None:
                    if entry.level == logging.WARNING:
                        warnings.append(entry.user_message)
                    continue
                kind = event.event_type
                if kind == kinds.STEP_START:
                    steps[event.step_key] = (entry.timestamp, None)
                elif kind in (kinds.STEP_SUCCESS, kinds.STEP_FAILURE):
                    steps[event.step_key] = (steps[event.step_key][0], entry.timestamp)
                    if kind == kinds.STEP_FAILURE:
                        failures.append(f"{event.step_key}: {event.message}{_cause(event)}")
                elif kind in (kinds.RUN_FAILURE, kinds.ENGINE_EVENT) and event.message:
                    if kind == kinds.RUN_FAILURE or "memory" in event.message.lower():
                        failures.append(event.message)
                elif kind == kinds.ASSET_CHECK_EVALUATION:
                    evaluation = event.event_specific_data
                    checks[evaluation.check_name] = evaluation.passed
                elif kind == kinds.ASSET_MATERIALIZATION:
                    materialization = event.event_specific_data.materialization
                    step = event.step_key or "?"
                    values = {
                        k: getattr(v, "value", v) for k, v in materialization.metadata.items()
                    }
                    metadata.setdefault(step, []).append(values)
                    if materialization.asset_key == dg.AssetKey("training_file"):
                        published = True
                elif kind == kinds.LOGS_CAPTURED:
                    data = event.event_specific_data
                    logs[data.file_key] = list(data.step_keys or [])
            out.append(
                RunFacts(
                    run_id=run.run_id, pair=pair, status=run.status.value,
                    start=record.start_time or 0.0, end=record.end_time or 0.0,
                    parent=run.parent_run_id, steps=steps, failures=failures, checks=checks,
                    published=published, step_metadata=metadata, log_files=logs,
                    warnings=warnings, tags=dict(run.tags),
                )
            )  # fmt: skip
    return sorted(out, key=lambda r: r.start)


def _cause(event: Any) -> str:
    """A step failure's innermost error (the user code's, under Dagster's wrappers)."""
    error = getattr(event.event_specific_data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    return f" ({error.message.strip()})" if error is not None else ""


def pool_intervals(runs: list[RunFacts]) -> list[tuple[float, float]]:
    """(start, end) of every step that holds a `bigquery` pool slot."""
    return [
        (start, end if end is not None else run.end)
        for run in runs
        for step, (start, end) in run.steps.items()
        if step.split("[")[0] in WAREHOUSE_STEPS
    ]


def missing_logs(rehearsal: Rehearsal, runs: list[RunFacts]) -> list[str]:
    """Steps whose stdout and stderr are not both in the log bucket, as GCSComputeLogManager
    names them (`{prefix}/storage/{run_id}/compute_logs/{file_key}.out|.err`)."""
    missing = []
    for run in runs:
        names = set(rehearsal.blobs(rehearsal.log_bucket, f"{LOG_PREFIX}/storage/{run.run_id}/"))
        covered = {step for steps in run.log_files.values() for step in steps}
        missing += [f"{run.run_id} {s}: no LOGS_CAPTURED" for s in run.steps if s not in covered]
        for file_key in run.log_files:
            for extension in ("out", "err"):
                name = f"{LOG_PREFIX}/storage/{run.run_id}/compute_logs/{file_key}.{extension}"
                if name not in names:
                    missing.append(name)
    return missing


def run_memory(rehearsal: Rehearsal, run: RunFacts) -> dict[str, float]:
    """MiB: the run's cgroup peak (RSS + page cache + its tmpfs bytes), when it had one, and its
    steps' own peak RSS and local bytes from their metadata."""
    from bqx_assets.defs.metadata import recorded_usage
    from bqx_assets_tests.e2e.launcher import cgroup_figures, run_cgroup

    out: dict[str, float] = {}
    cgroup = run_cgroup(rehearsal.cgroup_parent, run.run_id)
    if cgroup.exists():
        out["cgroup_peak_mib"] = round(cgroup_figures(cgroup)["peak_bytes"] / 2**20, 1)
    usages = [recorded_usage(m) for ms in run.step_metadata.values() for m in ms]
    for key in ("step_peak_rss_bytes", "step_peak_local_bytes", "step_footprint_bytes"):
        values = [u[key] for u in usages if u.get(key) is not None]
        if values:
            out[key.replace("_bytes", "_mib")] = round(max(values) / 2**20, 1)
    return out


def temporaries(rehearsal: Rehearsal) -> list[str]:
    """Temporary objects (`.{name}.{uuid}.tmp`) left in the staging and output buckets."""
    return [
        f"{bucket}/{name}"
        for bucket in (rehearsal.staging, rehearsal.output)
        for name in rehearsal.blobs(bucket)
        if name.endswith(".tmp")
    ]


def chunk_counts(run: RunFacts, step: str = "pair_checkpoints") -> dict[str, int]:
    """Chunks the step extracted and reused, summed over its families' materializations."""
    out = {"chunks_extracted": 0, "chunks_reused": 0}
    for metadata in run.step_metadata.get(step, []):
        for key in out:
            out[key] += int(metadata.get(key) or 0)
    return out


LOCATION = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"][
    "location_name"
]
"""workspace.yaml's code location."""
REPOSITORY = "__repository__"
"""The repository a `Definitions` object is served as."""

LAUNCH_RUN = """
mutation Run($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""


def observe_sources(rehearsal: Rehearsal, pairs: list[str], tags: dict[str, str]) -> list[str]:
    """The warehouse families observed as the UI's "Observe sources" does: a run of the sources
    of each pair, and one of the shared sources. Returns the run ids."""
    nodes = rehearsal.graphql("{ assetNodes { assetKey { path } opNames isObservable } }")
    sources: dict[str, list[list[str]]] = {}
    for node in nodes["assetNodes"]:
        if node["isObservable"]:
            for op in node["opNames"]:
                sources.setdefault(op, []).append(node["assetKey"]["path"])
    launches = [(op, pair) for op in ("pair_sources",) for pair in pairs] + [
        ("shared_sources", None)
    ]
    run_ids = []
    for op, pair in launches:
        run_tags = {**tags, **({"dagster/partition": pair} if pair else {})}
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": key} for key in sorted(sources[op])],
                "assetCheckSelection": [],  # not the sources' preflight checks
            },
            "mode": "default",
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in run_tags.items()]},
        }
        result = rehearsal.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        run_ids.append(result["run"]["runId"])
    return run_ids


def start_sensor(rehearsal: Rehearsal, name: str) -> None:
    """The sensor turned on, as its toggle in the UI does."""
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": name,
    }
    result = rehearsal.graphql(START_SENSOR, {"selector": selector})["startSensor"]
    assert result.get("sensorState", {}).get("status") == "RUNNING", result
