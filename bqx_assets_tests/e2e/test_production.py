"""The production instance rehearsed: a backfill through Postgres, the daemon, pools and GCS."""

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.costs import JOB
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets_tests.e2e.conftest import (
    ARTIFACTS,
    BIN,
    PAIRS,
    keep_logs,
    launch_backfill,
    max_overlap,
    start_process,
    wait_for_backfill,
)
from bqx_assets_tests.e2e.launcher import LIMIT_TAG, PID_TAG
from bqx_assets_tests.e2e.rehearsal import (
    BIGQUERY_POOL_LIMIT,
    MAX_CONCURRENT_RUNS,
    MONITOR_POLL_SECONDS,
    Rehearsal,
    RunFacts,
    chunk_counts,
    missing_logs,
    observe_sources,
    pool_intervals,
    rehearsal,
    run_facts,
    run_memory,
    start_sensor,
    temporaries,
)


def _pairs() -> tuple[str, ...]:
    """CI's 3 pairs, or those bench/rehearsal.py asks for (`all`: the catalog's 28)."""
    chosen = os.environ.get("BQX_REHEARSAL_PAIRS")
    if not chosen:
        return PAIRS
    return tuple(Catalog.load().pairs) if chosen == "all" else tuple(chosen.split(","))


REHEARSED = _pairs()
ROWS = int(os.environ.get("BQX_REHEARSAL_ROWS", "300"))
BACKFILL_TIMEOUT_S = max(1500, 300 * len(REHEARSED))

# Setup (Postgres, emulator, warehouse, shared checkpoints, servers, backfill) runs inside the
# first test's limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(BACKFILL_TIMEOUT_S + 900)]
FIGURES = ARTIFACTS / "rehearsal-figures.json"
OOM_LIMIT_MIB = 500
"""Below a run's need at any size: the run worker and one step process import Dagster and the
pipeline (~250 MiB each) before reading any data."""


def record(name: str, value: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2, default=str))


@dataclass
class Done:
    id: str
    state: dict[str, Any]
    seconds: float
    runs: list[RunFacts]


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    with rehearsal(tmp_path_factory.mktemp("rehearsal"), list(REHEARSED), ROWS) as deployment:
        yield deployment
    keep_logs(deployment, "rehearsal")


@pytest.fixture(scope="module")
def backfill(production: Rehearsal) -> Done:
    clock = time.monotonic()
    backfill_id = launch_backfill(production, list(REHEARSED))
    state = wait_for_backfill(production, backfill_id, BACKFILL_TIMEOUT_S)
    seconds = round(time.monotonic() - clock, 1)
    record("setup_seconds", production.figures)
    record("backfill_seconds", seconds)
    return Done(backfill_id, state, seconds, run_facts(production, backfill_id))


def test_every_pair_is_published_with_every_check_passed(
    production: Rehearsal, backfill: Done
) -> None:
    assert backfill.state["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, backfill.state
    assert sorted(r.pair for r in backfill.runs) == sorted(REHEARSED)
    published = set(production.blobs(production.output))
    for run in backfill.runs:
        assert run.status == "SUCCESS", (run.pair, run.failures)
        assert run.published, run.pair
        assert run.checks == dict.fromkeys(CHECK_NAMES, True), (run.pair, run.checks)
        assert f"training_{run.pair}.parquet" in published, sorted(published)
    assert temporaries(production) == []


def test_runs_and_pool_slots_stay_within_the_instance_limits(
    production: Rehearsal, backfill: Done
) -> None:
    runs = backfill.runs
    for pair in REHEARSED:
        assert max_overlap([(r.start, r.end) for r in runs if r.pair == pair]) == 1, pair
    # Reached, not only respected: the queue, not the machine, held the runs back.
    assert max_overlap([(r.start, r.end) for r in runs]) == MAX_CONCURRENT_RUNS
    slots = pool_intervals(runs)
    assert len(slots) == len(REHEARSED)
    assert max_overlap(slots) <= BIGQUERY_POOL_LIMIT, slots
    with production.instance() as instance:
        pool = instance.event_log_storage.get_concurrency_info("bigquery")
        assert pool.slot_count == BIGQUERY_POOL_LIMIT


def test_every_step_log_is_in_the_log_bucket(production: Rehearsal, backfill: Done) -> None:
    assert all(run.steps for run in backfill.runs)
    assert missing_logs(production, backfill.runs) == []


def test_each_run_is_held_to_the_job_memory(
    production: Rehearsal, backfill: Done, capsys: pytest.CaptureFixture[str]
) -> None:
    limit = int(JOB.memory_gib * 2**30)
    rows = []
    for run in backfill.runs:
        memory = run_memory(production, run)
        rows.append({"pair": run.pair, "seconds": round(run.seconds, 1), **memory})
        # Every step measured its own peak RSS and local bytes, whatever the launcher could do.
        assert memory["step_footprint_mib"] > 0, memory
        if production.memory_limit is None:
            assert 0 < memory["cgroup_peak_mib"] * 2**20 < limit, memory
    record("memory_limit", production.memory_limit or f"{JOB.memory_gib:g} GiB per run (cgroup)")
    record("runs", rows)
    with capsys.disabled():
        print(f"\nbackfill of {len(REHEARSED)} pairs: {backfill.seconds} s; runs: {rows}")
        if production.memory_limit is not None:
            print(f"no memory limit: {production.memory_limit}")


def test_costs_price_every_pair(
    production: Rehearsal, backfill: Done, capsys: pytest.CaptureFixture[str]
) -> None:
    output = production.run(str(BIN / "bqx"), "costs", "--pairs", ",".join(REHEARSED))
    summary = json.loads(output.strip().splitlines()[-1])
    lines = {line["name"]: line for line in summary["lines"]}
    assert set(REHEARSED) <= set(lines)
    for pair in REHEARSED:
        assert lines[pair]["estimated_cost_usd"] > 0, lines[pair]
    report = "\n".join(output.strip().splitlines()[:-1])
    record("costs_total", summary["total"])
    record("costs_report", report)
    with capsys.disabled():
        print("\n" + report)


def test_the_daemon_killed_mid_backfill_and_restarted_finishes_every_pair_once_at_a_time(
    production: Rehearsal, backfill: Done
) -> None:
    """The daemon SIGKILLed (with its code server) once a backfill's first run has started, and
    started again: the runs it launched go on (each is its own process, as each is its own
    container), the new daemon launches the rest, no pair is skipped or run twice at once."""
    pairs = list(REHEARSED)
    backfill_id = launch_backfill(production, pairs)
    deadline = time.monotonic() + 600
    while not any(r.status == "STARTED" for r in run_facts(production, backfill_id)):
        assert time.monotonic() < deadline, "no run of the backfill started"
        time.sleep(0.5)
    daemon = next(
        p for p in production.processes if "dagster-daemon" in str(p.args[0]) and p.poll() is None
    )
    os.killpg(daemon.pid, signal.SIGKILL)
    daemon.wait()
    killed_at = time.monotonic()
    time.sleep(5)
    start_process(production, "daemon", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml")
    state = wait_for_backfill(production, backfill_id, BACKFILL_TIMEOUT_S)
    runs = run_facts(production, backfill_id)
    assert state["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, state
    for pair in pairs:
        mine = [r for r in runs if r.pair == pair]
        assert [r.status for r in mine if r.published] == ["SUCCESS"], [
            (r.status, r.failures) for r in mine
        ]
        assert max_overlap([(r.start, r.end) for r in mine]) == 1, pair
    assert max_overlap([(r.start, r.end) for r in runs]) <= MAX_CONCURRENT_RUNS
    assert max_overlap(pool_intervals(runs)) <= BIGQUERY_POOL_LIMIT
    record(
        "daemon_killed_mid_backfill",
        {"runs": len(runs), "seconds_after_kill": round(time.monotonic() - killed_at, 1)},
    )


def _complete_chunks(production: Rehearsal, pair: str) -> list[str]:
    """The pair's checkpoint files whose manifest is written too: complete, reusable."""
    names = set(production.blobs(production.staging, f"checkpoints/{pair}/"))
    return sorted(
        n
        for n in names
        if n.endswith(".parquet") and n.removesuffix(".parquet") + ".manifest.json" in names
    )


def _wait_for_runs(
    production: Rehearsal, backfill_id: str, count: int, timeout: float = 900
) -> list[RunFacts]:
    """The backfill's runs once at least `count` exist and all have ended."""
    deadline = time.monotonic() + timeout
    runs: list[RunFacts] = []
    while time.monotonic() < deadline:
        runs = run_facts(production, backfill_id)
        if len(runs) >= count and all(r.status in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"runs of {backfill_id} did not end in {timeout} s: {runs}")


def _started_step(production: Rehearsal, backfill_id: str, step: str) -> RunFacts | None:
    for run in run_facts(production, backfill_id):
        if step in run.steps and run.steps[step][1] is None:
            return run
    return None


def test_a_run_killed_during_extraction_is_retried_and_reuses_its_chunks(
    production: Rehearsal, backfill: Done
) -> None:
    """The pair's checkpoints deleted, its run SIGKILLed (worker and step, as a container dies)
    once some tables are extracted: run monitoring fails it, run retries launch it again, the
    retry reuses what was complete and publishes the file the uncrashed backfill published."""
    pair = REHEARSED[0]
    reference = production.gcs.client().bucket(production.output).blob(f"training_{pair}.parquet")
    reference_bytes = reference.download_as_bytes()
    first = next(r for r in backfill.runs if r.pair == pair)
    total = sum(chunk_counts(first).values())
    staging = production.gcs.client().bucket(production.staging)
    owned = production.blobs(production.staging, f"checkpoints/{pair}/")
    deleted = sum(name.endswith(".parquet") for name in owned)  # the rest are shared tables'
    for name in owned:
        staging.blob(name).delete()

    backfill_id = launch_backfill(production, [pair])
    deadline = time.monotonic() + 600
    victim = None
    while time.monotonic() < deadline:
        victim = _started_step(production, backfill_id, "pair_checkpoints")
        if victim is not None and _complete_chunks(production, pair):
            break
        time.sleep(0.2)
    assert victim is not None, "the pair's run never started extracting"
    pid = int(_pid(production, victim.run_id))
    os.killpg(pid, signal.SIGKILL)
    complete = _complete_chunks(production, pair)
    killed_at = time.monotonic()

    runs = _wait_for_runs(production, backfill_id, 2)
    detected = time.monotonic() - killed_at
    killed = next(r for r in runs if r.run_id == victim.run_id)
    assert killed.status == "FAILURE"
    assert any("run worker" in f and "exited" in f for f in killed.failures), killed.failures
    assert not killed.published
    retries = [r for r in runs if r.parent == killed.run_id]
    assert [r.status for r in retries] == ["SUCCESS"], [(r.status, r.failures) for r in runs]
    retry = retries[0]
    counts = chunk_counts(retry)
    # Every chunk complete when the run died is reused; only the rest is read again.
    assert 0 < len(complete) < deleted <= total, (complete, deleted, total)
    assert counts == {
        "chunks_extracted": deleted - len(complete),
        "chunks_reused": total - deleted + len(complete),
    }, (counts, len(complete), deleted, total)
    assert retry.published and retry.checks == dict.fromkeys(CHECK_NAMES, True)
    assert temporaries(production) == []
    published = production.gcs.client().bucket(production.output).blob(f"training_{pair}.parquet")
    after = published.download_as_bytes()
    assert pl.read_parquet(io.BytesIO(after)).equals(pl.read_parquet(io.BytesIO(reference_bytes)))
    record(
        "killed_during_extraction",
        {
            "complete_chunks_at_kill": len(complete),
            "chunks_deleted_before_the_run": deleted,
            "chunks": total,
            "retry": counts,
            "seconds_to_retry_success": round(time.monotonic() - killed_at, 1),
            "seconds_to_detect_and_retry": round(detected, 1),
            "identical_bytes": after == reference_bytes,
            "failure": killed.failures,
        },
    )


def _pid(production: Rehearsal, run_id: str) -> str:
    with production.instance() as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        return run.tags[PID_TAG]


def test_a_run_over_its_memory_limit_is_killed_reported_and_publishes_nothing(
    production: Rehearsal, backfill: Done
) -> None:
    """A run held to a limit below what its steps need (the job's size is JOB; this run's is
    set lower through the rehearsal launcher's tag): the kernel kills it, the run fails saying
    so, and the pair's published file is the one from before."""
    if production.memory_limit is not None:
        pytest.skip(production.memory_limit)
    pair = REHEARSED[1]
    before = production.gcs.client().bucket(production.output).get_blob(f"training_{pair}.parquet")
    limit = OOM_LIMIT_MIB * 2**20
    backfill_id = launch_backfill(production, [pair], {LIMIT_TAG: str(limit)})
    runs = _wait_for_runs(production, backfill_id, 1)
    time.sleep(MONITOR_POLL_SECONDS * 3)  # a retry of a killed worker would be launched by now
    runs = _wait_for_runs(production, backfill_id, 1)
    assert runs and all(r.status == "FAILURE" for r in runs), [(r.status, r.failures) for r in runs]
    for run in runs:
        assert not run.published
        assert any("memory" in f.lower() for f in run.failures), run.failures
        memory = run_memory(production, run)
        assert memory["cgroup_peak_mib"] <= OOM_LIMIT_MIB + 1, memory
    after = production.gcs.client().bucket(production.output).get_blob(f"training_{pair}.parquet")
    assert after.generation == before.generation
    assert temporaries(production) == []
    record("over_memory_limit", {"limit_mib": OOM_LIMIT_MIB, "runs": len(runs),
                                 "failures": [r.failures for r in runs]})  # fmt: skip


def _details(markdown: str) -> dict[str, str]:
    """The first row of a `details` metadata table (defs/metadata.table), by its headers."""
    head, _, first = (line.strip("| ").split(" | ") for line in markdown.splitlines()[:3])
    return dict(zip(head, first, strict=True))


def _segments(production: Rehearsal, pair: str) -> list[str]:
    """The kept segments of the pair's published file (the GCS sink's `.segments/` folder)."""
    return production.blobs(production.output, f".segments/training_{pair}.parquet/")


def test_a_run_killed_during_the_merge_is_retried_and_publishes_the_same_file(
    production: Rehearsal, backfill: Done
) -> None:
    """The pair's run SIGKILLed (worker and step) once its training_file step is writing: the
    published file stays the one before, run retries build it again from the same complete
    chunks (none read from the warehouse), the file equals the uncrashed build, and the
    killed upload's segments and temporary objects are gone once the retry commits."""
    pair = REHEARSED[-1]
    output = production.gcs.client().bucket(production.output)
    before = output.get_blob(f"training_{pair}.parquet")
    reference = before.download_as_bytes()
    segments_before = len(_segments(production, pair))

    backfill_id = launch_backfill(production, [pair])
    deadline = time.monotonic() + 600
    victim = None
    while time.monotonic() < deadline:
        victim = _started_step(production, backfill_id, "training_file")
        if victim is not None:
            break
        time.sleep(0.2)
    assert victim is not None, "the pair's training_file step never started"
    # Killed once the merge has begun sending the file: a segment newer than the published file.
    while time.monotonic() < deadline:
        uploads = [
            b
            for b in output.list_blobs(prefix=f".segments/training_{pair}.parquet/")
            if b.time_created > before.updated
        ]
        if uploads:
            break
        time.sleep(0.1)
    assert uploads, "the merge never sent a segment"
    os.killpg(int(_pid(production, victim.run_id)), signal.SIGKILL)
    killed_at = time.monotonic()
    assert output.get_blob(f"training_{pair}.parquet").generation == before.generation

    runs = _wait_for_runs(production, backfill_id, 2)
    killed = next(r for r in runs if r.run_id == victim.run_id)
    assert killed.status == "FAILURE" and not killed.published, killed.failures
    assert any("run worker" in f and "exited" in f for f in killed.failures), killed.failures
    retries = [r for r in runs if r.parent == killed.run_id]
    assert [r.status for r in retries] == ["SUCCESS"], [(r.status, r.failures) for r in runs]
    retry = retries[0]
    # Run retries re-execute from the failure: the checkpoint step had succeeded, so the retry
    # is the merge alone, over the complete chunks, none read from the warehouse again.
    assert set(retry.steps) == {"training_file"}, retry.steps
    details = _details(retry.step_metadata["training_file"][0]["details"])
    assert details["chunks extracted again"] == "0", details
    assert retry.published and retry.checks == dict.fromkeys(CHECK_NAMES, True)
    after = output.get_blob(f"training_{pair}.parquet")
    data = after.download_as_bytes()
    assert pl.read_parquet(io.BytesIO(data)).equals(pl.read_parquet(io.BytesIO(reference)))
    assert temporaries(production) == []
    assert len(_segments(production, pair)) == segments_before
    record(
        "killed_during_merge",
        {
            "segments_sent_before_the_kill": len(uploads),
            "retry_steps": sorted(retry.steps),
            "retry_merge": details,
            "seconds_to_retry_success": round(time.monotonic() - killed_at, 1),
            "identical_bytes": data == reference,
            "failure": killed.failures,
        },
    )


STORAGES_PROBE = """{
  runsOrError(limit: 1) { __typename }
  assetsOrError(limit: 1) { __typename }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy } } }
}"""
"""A GraphQL request that reads the run storage, the event log and the daemons' heartbeats."""


def test_postgres_restarted_mid_run_leaves_one_published_build(
    production: Rehearsal, backfill: Done
) -> None:
    """The instance's PostgreSQL stopped while a run extracts and started again 10 s later: the
    run completes, or fails and is retried; the pair is published by exactly one run, with
    every check passed, its file equal to the uncrashed build, and no temporary object."""
    assert production.postgres is not None
    pair = REHEARSED[0]
    output = production.gcs.client().bucket(production.output)
    reference = output.blob(f"training_{pair}.parquet").download_as_bytes()
    staging = production.gcs.client().bucket(production.staging)
    for name in production.blobs(production.staging, f"checkpoints/{pair}/"):
        staging.blob(name).delete()  # the run reads its tables again: a long step to cut into

    backfill_id = launch_backfill(production, [pair])
    deadline = time.monotonic() + 600
    while _started_step(production, backfill_id, "pair_checkpoints") is None:
        assert time.monotonic() < deadline, "the pair's run never started extracting"
        time.sleep(0.2)
    production.postgres.stop("fast")  # every connection closed, as a failover or restart does
    time.sleep(10)
    production.postgres.start()
    restarted_at = time.monotonic()
    # The webserver holds one pooled connection per storage (optimize_for_webserver, no
    # pre-ping): a request on a connection the restart closed fails once, the next reconnects.
    failed_requests = 0
    while True:
        try:
            production.graphql(STORAGES_PROBE)
            break
        except AssertionError:
            failed_requests += 1
            assert failed_requests <= 5, "the webserver does not answer after the restart"

    # The run's own end, or its retry's (a retry of a failed run is launched within seconds).
    deadline = time.monotonic() + 900
    runs = _wait_for_runs(production, backfill_id, 1)
    while not any(r.status == "SUCCESS" for r in runs) and time.monotonic() < deadline:
        time.sleep(MONITOR_POLL_SECONDS * 3)
        runs = _wait_for_runs(production, backfill_id, len(runs))
    published = [r for r in runs if r.published]
    assert [r.status for r in published] == ["SUCCESS"], [(r.status, r.failures) for r in runs]
    assert published[0].checks == dict.fromkeys(CHECK_NAMES, True)
    assert max_overlap([(r.start, r.end) for r in runs]) == 1
    data = output.blob(f"training_{pair}.parquet").download_as_bytes()
    assert pl.read_parquet(io.BytesIO(data)).equals(pl.read_parquet(io.BytesIO(reference)))
    assert temporaries(production) == []
    record(
        "postgres_restarted_mid_run",
        {
            "runs": [(r.status, r.failures[:2]) for r in runs],
            "seconds_after_restart": round(time.monotonic() - restarted_at, 1),
            "webserver_requests_failed_after_restart": failed_requests,
        },
    )


APPENDED_MINUTES = 60
OBSERVED = {"bqx/rehearsal": "observe"}
"""The tag of the rehearsal's own observation runs, told apart from the automation's."""
SENSOR_INTERVAL_S = 30
"""How often an AutomationConditionSensorDefinition evaluates (its default)."""


OBSERVATIONS = {"pair_sources", "shared_sources"}
"""The steps of a run that only observes the warehouse."""


def _automation_runs(production: Rehearsal, since: float, pairs: list[str]) -> list[RunFacts]:
    """The runs created after `since` other than observations and the gate view's, once every
    one of `pairs` has published from one of them, all have ended, and no new one came for two
    of the refresh sensor's evaluations."""
    deadline = time.monotonic() + 1500
    settled_after = 2 * SENSOR_INTERVAL_S + 10
    runs: list[RunFacts] = []
    last_change, seen = time.monotonic(), -1
    while time.monotonic() < deadline:
        runs = [
            r
            for r in run_facts(production, created_after=since)
            if not OBSERVED.items() <= r.tags.items()
            and not (r.steps and set(r.steps) <= OBSERVATIONS | {"gate_summary"})
        ]
        if len(runs) != seen:
            last_change, seen = time.monotonic(), len(runs)
        ended = all(r.status in {"SUCCESS", "FAILURE", "CANCELED"} for r in runs)
        published = {r.pair for r in runs if r.published}
        if ended and set(pairs) <= published and time.monotonic() - last_change > settled_after:
            return runs
        time.sleep(5)
    raise AssertionError(f"the automation did not settle: {[(r.pair, r.status) for r in runs]}")


def _cut(run: RunFacts, step: str) -> set[str]:
    return {str(m["cut"]) for m in run.step_metadata.get(step, []) if m.get("cut")}


def _rows(data: bytes) -> int:
    return pl.read_parquet(io.BytesIO(data), columns=["interval_time"]).height


def test_a_source_change_during_a_backfill_then_automation_brings_the_pairs_behind_up_to_date(
    production: Rehearsal, backfill: Done
) -> None:
    """Upstream appends an hour to every table while the backfill's runs extract (the pairs'
    checkpoints deleted first, so each run reads): every pair's run reads as of the shared
    checkpoints' cut, so each file equals the build from before the append and passes its
    gate. The refresh sensor then turned on and the sources observed (the UI's "Observe
    sources"): the shared checkpoints are refreshed once, then each pair once, at the new cut,
    and nothing else. Last, one pair's own table alone grows: only that pair is rebuilt."""
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
    from bqx_assets.defs.automation import refresh_sensor

    pairs = list(REHEARSED)
    output = production.gcs.client().bucket(production.output)
    reference = {p: output.blob(f"training_{p}.parquet").download_as_bytes() for p in pairs}
    staging = production.gcs.client().bucket(production.staging)
    for pair in pairs:
        for name in production.blobs(production.staging, f"checkpoints/{pair}/"):
            staging.blob(name).delete()
    warehouse = production.env["BQX_WAREHOUSE_PATH"]

    backfill_id = launch_backfill(production, pairs)
    deadline = time.monotonic() + 600
    while not any(_complete_chunks(production, p) for p in pairs):
        assert time.monotonic() < deadline, "no run of the backfill started extracting"
        time.sleep(0.2)
    # DuckDB lets a writer in only between the readers' steps: the append waits for one to end.
    appended = production.run(
        str(BIN / "bqx"), "warehouse", "append", "--minutes", str(APPENDED_MINUTES),
        "--path", warehouse,
    )  # fmt: skip
    appended_at = time.time()
    state = wait_for_backfill(production, backfill_id, BACKFILL_TIMEOUT_S)
    assert state["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, state
    runs = run_facts(production, backfill_id)
    reads = sorted(r.steps["pair_checkpoints"][0] for r in runs)
    assert reads[0] < appended_at < reads[-1], ("no pair read after the append", appended)
    shared_cut = {str(m["cut"]) for m in _shared_materializations(production)}
    assert len(shared_cut) == 1, shared_cut
    for run in runs:
        assert run.status == "SUCCESS" and run.published, (run.pair, run.failures)
        assert run.checks == dict.fromkeys(CHECK_NAMES, True), (run.pair, run.checks)
        assert _cut(run, "pair_checkpoints") == shared_cut, run.pair
        data = output.blob(f"training_{run.pair}.parquet").download_as_bytes()
        before = pl.read_parquet(io.BytesIO(reference[run.pair]))
        assert pl.read_parquet(io.BytesIO(data)).equals(before), run.pair

    since = time.time()
    start_sensor(production, refresh_sensor.name)
    time.sleep(SENSOR_INTERVAL_S + 10)  # its first evaluation, before anything is observed
    observed = observe_sources(production, pairs, OBSERVED)
    runs = _automation_runs(production, since, pairs)
    shared = [r for r in runs if "shared_checkpoints" in r.steps]
    assert [r.status for r in shared] == ["SUCCESS"], [(r.pair, r.steps.keys()) for r in runs]
    new_cut = _cut(shared[0], "shared_checkpoints")
    assert len(new_cut) == 1 and new_cut != shared_cut, (new_cut, shared_cut)
    assert datetime.fromisoformat(next(iter(new_cut))).timestamp() > appended_at
    rebuilt = [r for r in runs if r not in shared]
    automation_runs = len(runs)
    # A pair rebuilt at the old cut may be merging when the shared refresh replaces its
    # chunks: its build starts again (a warning), it does not fail.
    started_again = [
        (r.pair, w) for r in rebuilt for w in r.warnings if "replaced while the build read" in w
    ]
    assert {r.pair for r in rebuilt} == set(pairs), [(r.pair, r.steps) for r in runs]
    for run in rebuilt:
        assert run.status == "SUCCESS", (run.pair, run.failures)
        if "training_file" in run.steps:
            assert run.checks == dict.fromkeys(CHECK_NAMES, True), (run.pair, run.checks)
    for pair in pairs:
        # Each pair's checkpoints read once the shared refresh ended, as of its cut, and its
        # file merged after them: one moment in the whole file. (A pair whose own observation
        # ended before the shared tables' began may also have been rebuilt before the shared
        # refresh, as of the old cut: a consistent file of that moment, replaced here.)
        after = [r for r in rebuilt if r.pair == pair and r.steps.get("pair_checkpoints", (0,))[0]
                 >= shared[0].end]  # fmt: skip
        assert after and {c for r in after for c in _cut(r, "pair_checkpoints")} == new_cut, pair
        read = min(r.steps["pair_checkpoints"][1] for r in after)
        merged = [r for r in rebuilt if r.pair == pair and r.steps.get("training_file", (0,))[0]
                  >= read]  # fmt: skip
        assert merged, (pair, [(r.pair, r.steps) for r in runs])
        assert max(merged, key=lambda r: r.steps["training_file"][0]).published, pair
        data = output.blob(f"training_{pair}.parquet").download_as_bytes()
        assert _rows(data) == _rows(reference[pair]) + APPENDED_MINUTES, pair

    behind = pairs[-1]
    table = next(t for t in Catalog.load().tables_for(behind) if t.scope == "pair")
    wh = EmbeddedWarehouse(warehouse, read_only=False)
    try:
        wh.append_minutes(table.dataset, table.name, 30)
    finally:
        wh.close()
    since = time.time()
    observed += observe_sources(production, pairs, OBSERVED)
    runs = _automation_runs(production, since, [behind])
    assert [(r.pair, r.status) for r in runs] == [(behind, "SUCCESS")], [
        (r.pair, r.steps.keys()) for r in runs
    ]
    assert runs[0].checks == dict.fromkeys(CHECK_NAMES, True)
    record(
        "source_change_during_backfill",
        {
            "appended_minutes": APPENDED_MINUTES,
            "pair_reads_after_the_append": sum(t > appended_at for t in reads),
            "automation_runs": automation_runs,
            "builds_started_again": started_again,
            "one_table_changed_runs": [r.pair for r in runs],
            "observation_runs": len(observed),
        },
    )


def _shared_materializations(production: Rehearsal) -> list[dict[str, Any]]:
    """The metadata of the shared checkpoints' latest materializations."""
    from bqx_assets.defs.assets import SHARED_FAMILIES, checkpoint_asset_key

    out = []
    with production.instance() as instance:
        for family in SHARED_FAMILIES:
            event = instance.get_latest_materialization_event(checkpoint_asset_key(family))
            assert event is not None and event.asset_materialization is not None, family
            metadata = event.asset_materialization.metadata
            out.append({k: getattr(v, "value", v) for k, v in metadata.items()})
    return out
