"""The production instance rehearsed on the production warehouse path: a backfill whose runs read
the BigQuery emulator through `BigQueryWarehouse` (`BQX_ENV=prod`), under the daemon, with
Postgres, the pools and GCS as in test_production.py.

The emulator spends time on every table it holds in each request that names a table (it lists
them all to find one): of the packaged catalog's 1,137 tables of three pairs, about 400 loaded
in 5 minutes, each slower than the last. These runs use the catalog cut to the first table of
every family of two pairs as the deployment's catalog (`BQX_CATALOG_PATH`)."""

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets_tests.conftest import MINI_PAIRS, every_family
from bqx_assets_tests.e2e.conftest import (
    ARTIFACTS,
    BIN,
    REPO,
    keep_logs,
    launch_backfill,
    max_overlap,
    wait_for_backfill,
)
from bqx_assets_tests.e2e.rehearsal import (
    BIGQUERY_POOL_LIMIT,
    Rehearsal,
    RunFacts,
    pool_intervals,
    rehearsal,
    run_facts,
    temporaries,
)

ROWS = 300
CATALOG = every_family(Catalog.load(), MINI_PAIRS)
FIGURES = ARTIFACTS / "rehearsal-bigquery-figures.json"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    work = tmp_path_factory.mktemp("rehearsal-bigquery")
    catalog = CATALOG.dump(work / "catalog.json")
    with rehearsal(
        work / "instance", list(MINI_PAIRS), ROWS, catalog=catalog, bigquery=True
    ) as deployment:
        yield deployment
    keep_logs(deployment, "rehearsal-bigquery")


@pytest.fixture(scope="module")
def runs(production: Rehearsal) -> list[RunFacts]:
    clock = time.monotonic()
    backfill_id = launch_backfill(production, list(MINI_PAIRS))
    state = wait_for_backfill(production, backfill_id)
    production.figures["backfill_seconds"] = round(time.monotonic() - clock, 1)
    assert state["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, state
    runs = run_facts(production, backfill_id)
    figures = {
        **production.figures,
        "runs": {r.pair: {"status": r.status, "seconds": round(r.seconds, 1)} for r in runs},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2))
    return runs


def _messages(production: Rehearsal, run_id: str) -> list[str]:
    with production.instance() as instance:
        return [entry.user_message for entry in instance.all_logs(run_id)]


def test_the_embedded_warehouse_is_out_of_reach(production: Rehearsal) -> None:
    """Loaded into the emulator, the DuckDB file was moved aside: a run cannot read it."""
    assert production.env["BQX_ENV"] == "prod"
    assert not Path(production.env["BQX_WAREHOUSE_PATH"]).exists()
    assert production.bigquery_source is not None and production.bigquery_source.exists()
    assert production.figures["bigquery_tables"] == len(CATALOG.tables) + len(MINI_PAIRS)


def test_every_pair_is_read_from_bigquery_and_published_with_every_check_passed(
    production: Rehearsal, runs: list[RunFacts]
) -> None:
    assert sorted(r.pair for r in runs) == sorted(MINI_PAIRS)
    published = set(production.blobs(production.output))
    for run in runs:
        assert run.status == "SUCCESS", (run.pair, run.failures)
        assert run.checks == dict.fromkeys(CHECK_NAMES, True), (run.pair, run.checks)
        assert f"training_{run.pair}.parquet" in published, sorted(published)
        read = [m for m in _messages(production, run.run_id) if "tables from" in m]
        assert read and all("from BigQuery project" in m for m in read), read
    assert temporaries(production) == []
    # The pool held the BigQuery steps of both runs to its limit.
    for pair in MINI_PAIRS:
        assert max_overlap([(r.start, r.end) for r in runs if r.pair == pair]) == 1
    assert max_overlap(pool_intervals(runs)) <= BIGQUERY_POOL_LIMIT


def test_each_file_equals_the_embedded_warehouses_build_of_the_same_rows(
    production: Rehearsal, runs: list[RunFacts], tmp_path: Path
) -> None:
    """`bqx demo` from the same rows in the embedded warehouse, local roots: the files the
    BigQuery runs published are the same frames, column for column."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BQX_", "DAGSTER_"))}
    env.update(
        BQX_ENV="local",
        DAGSTER_HOME=str(tmp_path),
        BQX_CATALOG_PATH=production.env["BQX_CATALOG_PATH"],
        BQX_MIN_ROWS=production.env["BQX_MIN_ROWS"],
        PYTHONPATH=str(REPO),
    )
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    bucket = production.gcs.client().bucket(production.output)
    assert production.bigquery_source is not None
    for pair in MINI_PAIRS:
        done = subprocess.run(
            [str(BIN / "bqx"), "demo", "--pair", pair, "--warehouse",
             str(production.bigquery_source)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        local = pl.read_parquet(tmp_path / "data" / "output" / f"training_{pair}.parquet")
        remote = tmp_path / f"bigquery_{pair}.parquet"
        bucket.blob(f"training_{pair}.parquet").download_to_filename(remote)
        built = pl.read_parquet(remote)
        assert built.columns == local.columns, pair
        assert built.height == local.height > 0, pair
        assert built.equals(local), pair


def test_costs_price_the_bigquery_reads_of_both_pairs(
    production: Rehearsal, runs: list[RunFacts]
) -> None:
    """`bqx costs` over the instance's records: each pair's reads through Storage Read, at the
    configured price per TiB, beside its run time."""
    output = production.run(str(BIN / "bqx"), "costs", "--pairs", ",".join(MINI_PAIRS))
    summary = json.loads(output.strip().splitlines()[-1])
    lines = {line["name"]: line for line in summary["lines"]}
    for pair in MINI_PAIRS:
        assert lines[pair]["bytes_read"] > 0 and lines[pair]["bigquery_usd"] > 0, lines[pair]
