"""A local deployment: temp DAGSTER_HOME, 3-pair warehouse, dagster-webserver and dagster-daemon."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BIN = Path(sys.executable).parent
PAIRS = ("eurusd", "gbpusd", "usdjpy")
ROWS = 300
BACKFILL_TIMEOUT_S = 1500
BIGQUERY_POOL_LIMIT = 2
RANGE_START_TAG = "dagster/asset_partition_range_start"
MAX_CONCURRENT_RUNS = 3
"""Three pair runs at once, so the bigquery pool (2), not the run queue, bounds warehouse reads."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Deployment:
    """The running webserver and daemon over one temp project folder."""

    root: Path
    env: dict[str, str]
    url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:  # its body holds the GraphQL error
            raise AssertionError(f"GraphQL {error.code}: {error.read()[:4000]!r}") from error
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def run(self, *args: str, timeout: float = 900) -> str:
        """A command in the project folder with the deployment's environment; its output."""
        done = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout


def _project(root: Path) -> dict[str, str]:
    """Copy the instance and workspace files into `root`, with the test's run limit."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = MAX_CONCURRENT_RUNS
    config["concurrency"]["pools"]["default_limit"] = BIGQUERY_POOL_LIMIT
    limits = config["concurrency"]["runs"].setdefault("tag_concurrency_limits", [])
    if not any(limit["key"] == RANGE_START_TAG for limit in limits):
        limits.append(
            {"key": RANGE_START_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        )
    # No newsletter dialog over the pages the browser test screenshots.
    config["nux"] = {"enabled": False}
    # The daemon picks up queued runs and backfills quickly, so the test does not idle.
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    (root / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(REPO / "workspace.yaml", root / "workspace.yaml")
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BQX_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(root),
        BQX_ENV="local",
        BQX_WAREHOUSE_PATH=str(data / "warehouse.duckdb"),
        BQX_CHECKPOINT_ROOT=str(data / "checkpoints"),
        BQX_CACHE_DIR=str(data / "cache" / "checkpoints"),
        BQX_OUTPUT_ROOT=str(data / "output"),
        BQX_OUTPUT_CACHE_DIR=str(data / "cache" / "output"),
        BQX_WORKDIR=str(data / "work"),
        BQX_MIN_ROWS="100",
        BQX_EXTRACT_THREADS="2",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return env


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant; one ending as another starts is no overlap."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, change in points:
        running += change
        peak = max(peak, running)
    return peak


def start_process(deployment: Deployment, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (deployment.root / f"{name}.log").open("wb")
    process = subprocess.Popen(
        args,
        cwd=deployment.root,
        env=deployment.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown ends its children too
    )
    deployment.processes.append(process)
    return process


def wait_until_loaded(deployment: Deployment, timeout: float = 300) -> None:
    query = """{ workspaceOrError { __typename ... on Workspace {
        locationEntries { name loadStatus
          locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for process in deployment.processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args[0]} exited with {process.returncode}")
        try:
            entries = deployment.graphql(query)["workspaceOrError"]["locationEntries"]
            last = entries
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [
                    e["locationOrLoadError"]
                    for e in entries
                    if e["locationOrLoadError"]["__typename"] == "PythonError"
                ]
                if errors:
                    raise AssertionError(f"code location failed to load: {errors}")
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"webserver did not load the code location in {timeout} s: {last}")


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_deployment(
    deployment: Deployment,
    pairs: Sequence[str],
    rows: int,
    *,
    prebuilt: str | None = None,
    made: Callable[[Path], None] | None = None,
) -> None:
    """The warehouse (`rows` minutes of `pairs` of the deployment's catalog, or a copy of
    `prebuilt`), handed to `made`, the shared checkpoints, then the webserver and the daemon on a
    free local port, loaded: the deployment's processes, which `stop_processes` ends."""
    clock = time.monotonic()
    warehouse = Path(deployment.env["BQX_WAREHOUSE_PATH"])
    catalog = deployment.env.get("BQX_CATALOG_PATH")
    if prebuilt:
        warehouse.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(prebuilt, warehouse)
    else:
        deployment.run(
            str(BIN / "bqx"), "warehouse", "create", "--rows", str(rows),
            "--pairs", ",".join(pairs), "--path", str(warehouse),
            "--start", "2024-01-01T08:00",  # inside ETF hours: corr tables have rows
            *(["--catalog", catalog] if catalog else []),
        )  # fmt: skip
    if made is not None:
        made(warehouse)
    deployment.figures["warehouse_seconds"] = round(time.monotonic() - clock, 1)
    clock = time.monotonic()
    deployment.run(
        str(BIN / "dagster"), "job", "execute", "-m", "bqx_assets.definitions",
        "-j", "shared_checkpoints_job",
    )  # fmt: skip
    deployment.figures["shared_checkpoints_seconds"] = round(time.monotonic() - clock, 1)
    port = deployment.url.rsplit(":", 1)[1]
    start_process(
        deployment, "webserver", str(BIN / "dagster-webserver"),
        "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port,
    )  # fmt: skip
    start_process(deployment, "daemon", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml")
    wait_until_loaded(deployment)


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Warehouse, shared checkpoints, then the webserver and daemon on a free local port."""
    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("bqx-e2e")
    deployment = Deployment(root, _project(root), f"http://127.0.0.1:{free_port()}")
    try:
        # BQX_E2E_WAREHOUSE: a warehouse made by the same command, copied.
        start_deployment(deployment, PAIRS, ROWS, prebuilt=os.environ.get("BQX_E2E_WAREHOUSE"))
        yield deployment
    finally:
        stop_processes(deployment.processes)
        keep_logs(deployment, "e2e")


def keep_logs(deployment: Deployment, prefix: str) -> None:
    """The webserver's and the daemon's logs, kept in test-artifacts as `{prefix}-{name}.log`."""
    ARTIFACTS.mkdir(exist_ok=True)
    for name in ("webserver", "daemon"):
        log = deployment.root / f"{name}.log"
        if log.exists():
            shutil.copy(log, ARTIFACTS / f"{prefix}-{name}.log")


LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions
      runs { runId status tags { key value } startTime endTime }
      error { message }
    }
    ... on PythonError { message }
  }
}"""

DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def pair_asset_keys(deployment: Deployment) -> list[list[str]]:
    """The training file and every asset of the `pair_checkpoints` step, from the webserver."""
    query = """{ assetNodes { assetKey { path } opNames } }"""
    nodes = deployment.graphql(query)["assetNodes"]
    keys = [n["assetKey"]["path"] for n in nodes if "pair_checkpoints" in n["opNames"]]
    return [*sorted(keys), ["training_file"]]


def launch_backfill(
    deployment: Deployment, pairs: Sequence[str], tags: dict[str, str] | None = None
) -> str:
    """A backfill of `pairs`' pair assets, as the UI's backfill button sends it."""
    params = {
        "partitionNames": list(pairs),
        "assetSelection": [{"path": key} for key in pair_asset_keys(deployment)],
        # Dagster refuses a title over 100 characters (28 pairs' names are 195).
        "title": f"e2e {','.join(pairs)}" if len(pairs) <= 8 else f"e2e {len(pairs)} pairs",
        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
    }
    result = deployment.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def wait_for_backfill(
    deployment: Deployment, backfill_id: str, timeout: float = BACKFILL_TIMEOUT_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = deployment.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        runs = state.get("runs") or []
        if state.get("status") in DONE and all(
            r["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs
        ):
            return state
        time.sleep(3)
    raise AssertionError(f"backfill {backfill_id} did not finish in {timeout} s: {state}")


@dataclass
class Backfill:
    id: str
    state: dict[str, Any]
    seconds: float

    def runs_by_pair(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for run in self.state["runs"]:
            tags = {t["key"]: t["value"] for t in run["tags"]}
            # Backfill runs of one partition carry a range of one, not dagster/partition.
            pair = tags.get("dagster/partition") or tags.get(RANGE_START_TAG, "?")
            out.setdefault(pair, []).append(run)
        return out


@pytest.fixture(scope="session")
def backfill(deployment: Deployment) -> Backfill:
    """A backfill of the 3 pairs, launched over GraphQL and followed to its end."""
    clock = time.monotonic()
    backfill_id = launch_backfill(deployment, list(PAIRS))
    state = wait_for_backfill(deployment, backfill_id)
    result = Backfill(backfill_id, state, round(time.monotonic() - clock, 1))
    deployment.figures["backfill_seconds"] = result.seconds
    return result
