"""The asset graph materialized through Dagster: the pairs' training files and their contents,
shared checkpoints written once, a rolling training window, row groups copied on a refresh,
observed data versions, and the errors a step fails with."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.schema import expected_schema
from bqx_assets.core.gate.profile import Profile, load_history, profile_key
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.layout import KEY, training_file_key
from bqx_assets.core.publish import latest_report
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse import DateRange
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets.defs.assets import (
    checkpoint_asset_key,
    pair_checkpoints,
    pair_sources,
    shared_checkpoints,
    training_file,
    warehouse_key,
)
from bqx_assets.defs.metadata import recorded_usage
from bqx_assets.defs.overview import gate_summary
from bqx_assets_tests.builders import correct_day
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.core.checkpoints.conftest import (
    START,
    assert_same,
    days_of,
    utc,
)
from bqx_assets_tests.defs.pipeline import (
    DAY,
    PAIR,
    append_day,
    build,
    resources,
    training_metadata,
)

JAN = [date(2024, 1, d) for d in (29, 30, 31)]
FEB = [date(2024, 2, d) for d in (1, 2, 4)]
"""The three days of the rolling-window warehouse (from START, a Monday), then the trading days
appended: Thursday; Friday until the FX weekend (22:00); Sunday from 22:00."""


def targets_rows(path: Path, catalog: Catalog, first: date, end: date) -> pa.Table:
    """PAIR's targets table, key and targets, in the days [first, end)."""
    targets = catalog.targets[PAIR]
    wh = EmbeddedWarehouse(path)
    try:
        names = [KEY, *targets.targets]
        return wh.read(targets.dataset, targets.name, names, DateRange(utc(first), utc(end))).data
    finally:
        wh.close()


# -- two pairs built from scratch -------------------------------------------------------------
@pytest.fixture(scope="module")
def materialized(
    tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> dict[str, object]:
    catalog, catalog_path = mini
    root = tmp_path_factory.mktemp("pipeline")
    res = resources(root, catalog_path, mini_warehouse)
    instance = dg.DagsterInstance.ephemeral()
    shared = dg.materialize([shared_checkpoints], resources=res, instance=instance)
    assert shared.success
    cov = root / "ckpt" / "shared" / "cov_agg_eurusd_gbpusd"
    mtimes = []
    runs = {}
    for pair in catalog.pairs:
        runs[pair] = dg.materialize(
            [pair_checkpoints, training_file],
            partition_key=pair,
            resources=res,
            instance=instance,
        )
        mtimes.append(sorted(f.stat().st_mtime_ns for f in cov.glob("*.parquet")))
    summary = dg.materialize([gate_summary], resources=res, instance=instance)
    return {
        "root": root, "instance": instance, "runs": runs, "cov_mtimes": mtimes,
        "summary": summary,
    }  # fmt: skip


def test_each_pair_has_a_published_training_file_of_the_expected_shape(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    catalog, _ = mini
    for pair in catalog.pairs:
        assert materialized["runs"][pair].success
        path = materialized["root"] / "out" / f"training_{pair}.parquet"
        meta = pq.read_metadata(path)
        assert meta.num_rows == 600
        assert tuple(meta.schema.to_arrow_schema().names) == catalog.training_columns(pair)
        assert "base_bqx__target_45" not in meta.schema.to_arrow_schema().names  # leak kept out
    assert not list((materialized["root"] / "out").glob("quarantine/*"))


def test_training_file_holds_the_source_values(
    materialized: dict, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    catalog, _ = mini
    data = pq.read_table(materialized["root"] / "out" / "training_eurusd.parquet")
    targets = catalog.targets["eurusd"]
    corr = catalog.table("corr_etf_idx_eurusd_spy")
    wh = EmbeddedWarehouse(mini_warehouse)
    try:
        spine = wh.read(targets.dataset, targets.name, [KEY, *targets.targets], DateRange())
        source = wh.read(corr.dataset, corr.name, expected_schema(corr).names, DateRange()).data
    finally:
        wh.close()
    assert data.column("interval_time").equals(spine.data.column("interval_time"))
    assert data.column("target_bqx720_h60").equals(spine.data.column("target_bqx720_h60"))
    # An ETF table that starts late: nulls first, then its values on the matching keys.
    merged = data.column("corr_etf_idx_spy__corr_mean_45")
    late = 600 - source.num_rows
    assert late > 0 and merged.slice(0, late).null_count == late
    assert merged.slice(late).equals(source.column("corr_mean_45"))
    # A shared table runs past the spine: its extra minutes are dropped, not appended.
    tri = data.column("tri_agg_bqx_eur_usd_gbp__currency1")
    assert pc.all(pc.equal(tri, "eur")).as_py()
    # Dtypes survive: bool, int64, string.
    schema = data.schema
    assert schema.field("div_bqx__div_short_leading").type == pa.bool_()
    assert schema.field("mkt_sentiment__risk_sentiment").type == pa.string()
    counts = [c.name for c in catalog.table("agg_eurusd").columns if c.dtype == "INT64"]
    assert counts and all(schema.field(f"agg__{c}").type == pa.int64() for c in counts)


def test_shared_checkpoints_are_written_once_for_both_pairs(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    first, second = materialized["cov_mtimes"]
    assert first == second  # gbpusd reused the cov table eurusd wrote
    gbpusd = materialized["runs"]["gbpusd"]
    cov = gbpusd.asset_materializations_for_node("pair_checkpoints")
    meta = next(m.metadata for m in cov if m.asset_key == dg.AssetKey(["checkpoints", "cov"]))
    # One of gbpusd's two cov tables is eurusd's, reused; the other read.
    assert "| 1 | 1 |" in meta["details"].value  # tables extracted, tables reused
    assert meta["chunks_reused"].value >= 1 and meta["chunks_extracted"].value >= 1
    assert meta["read_mb_estimated"].value > 0
    shared_dir = materialized["root"] / "ckpt" / "shared"
    assert len(list(shared_dir.glob("tri_*/*.parquet"))) >= 1
    assert not (materialized["root"] / "ckpt" / "gbpusd" / "tri_agg_bqx_eur_usd_gbp").exists()


def test_gate_checks_recorded_per_pair(materialized: dict, mini: tuple[Catalog, Path]) -> None:
    catalog, _ = mini
    for pair in catalog.pairs:
        evaluations = materialized["runs"][pair].get_asset_check_evaluations()
        assert {e.check_name: e.passed for e in evaluations} == dict.fromkeys(CHECK_NAMES, True)


def test_each_published_file_has_its_profile_and_its_gate_report_from_the_same_run(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    """Whatever was selected (here the pair's checkpoints and training file), the run that
    publishes a file publishes its profile (the next build's reference) and its gate report."""
    catalog, _ = mini
    out = LocalStorage(materialized["root"] / "out")
    for pair in catalog.pairs:
        profile = Profile.from_bytes(out.read_bytes(profile_key(pair)) or b"", pair)
        assert profile.pair == pair and profile.rows == 600
        assert [p.rows for p in load_history(out, pair)] == [600]
        report = latest_report(out, pair)
        assert report is not None and report["run_id"] == materialized["runs"][pair].run_id
        assert (report["status"], report["passed"], report["failed"]) == ("published", True, [])


def test_the_metadata_of_a_training_file_is_a_few_keys_with_units(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    meta = training_metadata(materialized["runs"][PAIR])
    assert meta["dagster/row_count"] == 600
    assert str(meta["dagster/uri"]).endswith(f"out/training_{PAIR}.parquet")
    assert meta["status"] == "published" and meta["gate"] == "passed"
    assert 0 < meta["size_mb"] < 100 and 0 < meta["step_peak_memory_mib"] < 4096
    # The run's cost: its checkpoint step's and its own.
    assert meta["run_cost_usd"] > meta["step_cost_usd"] > 0
    assert "| corr |" in meta["details"] and "judged against" in meta["details"]
    assert len(meta) <= 16  # a handful, the rest in the details table
    # Each checkpoint step records its usage once, on one family.
    made = materialized["runs"][PAIR].asset_materializations_for_node("pair_checkpoints")
    assert sum("usage" in m.metadata for m in made) == 1
    # Query bytes as billed, once (the embedded warehouse bills none); reads as estimates.
    billed = [m.metadata["step_query_billed_mb"].value for m in made if "usage" in m.metadata]
    assert billed == [0.0] and all("read_mb_estimated" in m.metadata for m in made)
    # No JSON anywhere: the usage record is a table of a row per measure, read back whole.
    every = [*made, *materialized["runs"][PAIR].asset_materializations_for_node("training_file")]
    assert not any(isinstance(v, dg.JsonMetadataValue) for m in every for v in m.metadata.values())
    usage = recorded_usage(meta)
    assert usage["step_wall_seconds"] == pytest.approx(meta["step_seconds"], abs=0.01)
    assert usage["step_estimated_cost_usd"] == pytest.approx(meta["step_cost_usd"], abs=1e-6)


def test_the_gate_summary_shows_every_pair_on_one_page(
    materialized: dict, mini: tuple[Catalog, Path]
) -> None:
    catalog, _ = mini
    run = materialized["summary"]
    frame = run.output_for_node("gate_summary")
    assert frame["pair"].to_list() == sorted(catalog.pairs)
    assert set(frame["status"].to_list()) == {"published"}
    assert all(v == "passed" for name in CHECK_NAMES for v in frame[name].to_list())
    assert frame["rows"].to_list() == [600, 600]
    (made,) = run.asset_materializations_for_node("gate_summary")
    assert made.metadata["pairs_failing"].value == 0
    assert "| eurusd | passed (published) |" in made.metadata["gate"].value


def test_a_file_that_fails_the_gate_is_quarantined_and_the_published_one_kept(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses, materialized: dict
) -> None:
    """The pair's published file and profile (those of the last good build) stay as they were
    when a build from a warehouse whose regime family went all null fails the gate: the run
    fails on the blocking check, the file goes to quarantine with its report, and the profile
    report becomes the pair's latest."""
    catalog, catalog_path = mini
    out = tmp_path / "out"
    kept = [training_file_key(PAIR), profile_key(PAIR)]
    for key in kept:
        (out / key).parent.mkdir(parents=True, exist_ok=True)
        (out / key).write_bytes((materialized["root"] / "out" / key).read_bytes())
    before = {key: (out / key).read_bytes() for key in kept}
    faulty = warehouses.path(catalog, pairs=MINI_PAIRS, rows=600, faults=("allnull:regime",))
    res = resources(tmp_path, catalog_path, faulty)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([shared_checkpoints], resources=res, instance=instance).success
    run = dg.materialize(
        [pair_checkpoints, training_file], partition_key=PAIR, resources=res,
        instance=instance, raise_on_error=False,
    )  # fmt: skip
    assert not run.success
    failed = {e.check_name for e in run.get_asset_check_evaluations() if not e.passed}
    assert "null_completeness" in failed
    assert {key: (out / key).read_bytes() for key in kept} == before
    report = latest_report(LocalStorage(out), PAIR)
    assert report is not None and report["status"] == "quarantined"
    assert report["run_id"] == run.run_id and "null_completeness" in report["failed"]
    summary = dg.materialize([gate_summary], resources=res, instance=instance)
    frame = summary.output_for_node("gate_summary")
    assert frame["pair"].to_list()[0] == PAIR  # the failing pair first
    assert frame["null_completeness"].to_list()[0].startswith("FAILED: ")
    quarantined = sorted(p.name for p in (out / "quarantine").iterdir())
    assert len(quarantined) == 2 and quarantined[0].endswith(".parquet")
    assert quarantined[1] == quarantined[0].removesuffix(".parquet") + ".report.json"
    assert list(LocalStorage(out).temporaries("")) == []


def test_missing_checkpoints_fail_the_training_file_by_name(
    tmp_path: Path, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> None:
    _, catalog_path = mini
    res = resources(tmp_path, catalog_path, mini_warehouse)
    samplers = _samplers()
    run = dg.materialize(
        [training_file], partition_key="eurusd", resources=res, raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert not run.success
    failure = run.get_step_failure_events()[0].event_specific_data.error.to_string()
    assert "pair eurusd: 15 of 15 tables have no verified checkpoint: agg_eurusd" in failure
    assert not (tmp_path / "out" / "training_eurusd.parquet").exists()
    assert _samplers() == samplers  # the failed step stopped its local-bytes sampler


def _samplers() -> set[threading.Thread]:
    """The local-bytes sampler threads alive in this process (a step's runs in it)."""
    return {t for t in threading.enumerate() if t.name == "local-bytes" and t.is_alive()}


def test_a_changed_source_table_makes_its_checkpoint_stale(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    catalog, catalog_path = mini
    path = warehouses.copy(tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=600)
    res = resources(tmp_path, catalog_path, path)
    instance = dg.DagsterInstance.ephemeral()
    observed = dg.AssetSelection.assets(warehouse_key("lag"), warehouse_key("agg"))
    defs = dg.Definitions(
        assets=[pair_sources, pair_checkpoints],
        jobs=[dg.define_asset_job("observe", observed)],
        resources=res,
    )
    graph = defs.resolve_asset_graph()

    def status(family: str) -> StaleStatus:
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        return resolver.get_status(checkpoint_asset_key(family), "eurusd")

    def observe() -> None:
        job = defs.resolve_job_def("observe")
        assert job.execute_in_process(instance=instance, partition_key="eurusd").success

    observe()
    run = dg.materialize(
        [pair_sources, pair_checkpoints], partition_key="eurusd", resources=res,
        instance=instance, selection=[checkpoint_asset_key("lag"), checkpoint_asset_key("agg")],
    )  # fmt: skip
    assert run.success
    assert status("lag") == StaleStatus.FRESH and status("agg") == StaleStatus.FRESH
    grown = EmbeddedWarehouse(path, read_only=False)
    try:
        grown.append_minutes(catalog.features_dataset, "lag_eurusd_45", 3)
    finally:
        grown.close()
    observe()
    assert status("lag") == StaleStatus.STALE
    assert status("agg") == StaleStatus.FRESH


def test_a_training_file_of_a_pair_whose_checkpoints_are_missing_is_not_written(
    tmp_path: Path, mini: tuple[Catalog, Path], materialized: dict
) -> None:
    """The same refusal where a published file exists: it stays byte-identical."""
    _, catalog_path = mini
    out = tmp_path / "out"
    out.mkdir()
    published = materialized["root"] / "out" / "training_eurusd.parquet"
    (out / published.name).write_bytes(published.read_bytes())
    res = resources(tmp_path, catalog_path, tmp_path / "no-warehouse.duckdb")
    run = dg.materialize(
        [training_file], partition_key="eurusd", resources=res, raise_on_error=False,
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert not run.success
    assert (out / published.name).read_bytes() == published.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [published.name]


# -- a rolling training window ----------------------------------------------------------------
def three_days(warehouses: Warehouses, catalog: Catalog, dest: Path) -> Path:
    """A private copy of both mini pairs' warehouse, Monday 29 to Wednesday 31 January 2024 (the
    session's, which the checkpoint tests share)."""
    return warehouses.copy(dest, catalog, pairs=MINI_PAIRS, rows=3 * DAY, start=START)


def test_the_training_file_holds_the_last_n_trading_days_and_moves_with_an_append(
    mini: tuple[Catalog, Path], warehouses: Warehouses, tmp_path: Path
) -> None:
    catalog, catalog_path = mini
    path = three_days(warehouses, catalog, tmp_path / "w.duckdb")
    # A window of two days that moves by one replaces half of the file: its null shares move
    # more than a day's drift may (a cov outage and a tri source's late start leave it), so
    # drift is allowed here as far as a share falling to nothing.
    drift = {"drift_relative": 1.0}
    res = resources(tmp_path, catalog_path, path, gate=drift, window_days=2)
    instance = dg.DagsterInstance.ephemeral()
    published = tmp_path / "out" / f"training_{PAIR}.parquet"

    run = build(res, instance)
    data = pq.read_table(published)
    expected = targets_rows(path, catalog, JAN[1], FEB[0])
    assert days_of(data) == set(JAN[1:])
    assert data.column(KEY).to_pylist() == expected.column(KEY).to_pylist()
    target = catalog.targets[PAIR].targets[0]
    assert data.column(target).to_pylist() == expected.column(target).to_pylist()
    made = run.asset_materializations_for_node("pair_checkpoints")
    assert {m.metadata["window_start"].value for m in made} == {utc(JAN[1]).isoformat()}

    append_day(path)
    build(res, instance)
    data = pq.read_table(published)
    assert days_of(data) == {JAN[2], FEB[0]}  # Tuesday dropped out, Thursday came in
    expected = targets_rows(path, catalog, JAN[2], FEB[1])
    assert data.column(KEY).to_pylist() == expected.column(KEY).to_pylist()

    # A from-scratch build of the same window is the same file.
    scratch = tmp_path / "scratch"
    build(resources(scratch, catalog_path, path, gate=drift, window_days=2), instance)
    assert_same(data, pq.read_table(scratch / "out" / f"training_{PAIR}.parquet"))


def test_a_start_and_a_rolling_length_on_the_resource_fail_the_step_writing_nothing(
    mini: tuple[Catalog, Path], warehouses: Warehouses, tmp_path: Path
) -> None:
    catalog, catalog_path = mini
    path = warehouses.path(catalog, pairs=MINI_PAIRS, rows=3 * DAY, start=START)
    res = resources(tmp_path, catalog_path, path, window_start="2024-01-30", window_days=2)
    samplers = _samplers()
    run = dg.materialize(
        [pair_checkpoints], partition_key=PAIR, resources=res, raise_on_error=False
    )
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure)
    assert "both a start" in str(failure.step_failure_data.error)
    assert _samplers() == samplers  # the failed step stopped its local-bytes sampler
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").rglob("*.parquet"))


def test_observed_versions_follow_the_days_the_rolling_window_reads(
    mini: tuple[Catalog, Path], warehouses: Warehouses, tmp_path: Path
) -> None:
    """With the last two days (Tuesday, Wednesday), a corrected Monday of a pair table changes
    no observed version (no chunk of the window holds it), a corrected Tuesday changes its
    family's and no other's."""
    catalog, catalog_path = mini
    path = three_days(warehouses, catalog, tmp_path / "w.duckdb")
    res = resources(tmp_path, catalog_path, path, window_days=2)
    job = dg.Definitions(
        assets=[pair_sources],
        jobs=[dg.define_asset_job("observe", dg.AssetSelection.assets(pair_sources))],
        resources=res,
    ).resolve_job_def("observe")

    def versions() -> dict[str, str]:
        run = job.execute_in_process(partition_key=PAIR)
        assert run.success
        return {
            o.asset_key.path[-1]: o.tags["dagster/data_version"]
            for o in run.asset_observations_for_node("pair_sources")
        }

    before = versions()
    assert set(before) >= {"agg", "targets"}
    correct_day(path, catalog, f"agg_{PAIR}", JAN[0])
    assert versions() == before
    correct_day(path, catalog, f"agg_{PAIR}", JAN[1])
    after = versions()
    assert {f for f in after if after[f] != before[f]} == {"agg"}


# -- a refresh copies the published file's unchanged row groups ---------------------------------
def test_a_dagster_refresh_copies_row_groups_from_the_published_file(
    mini: tuple[Catalog, Path], warehouses: Warehouses, tmp_path: Path
) -> None:
    catalog, catalog_path = mini
    # Tuesday, January 30 to Saturday, February 3: four trading days of one pair (the merge
    # tests' warehouse), then Monday, February 5.
    path = warehouses.copy(
        tmp_path / "w.duckdb", catalog, pairs=(PAIR,), rows=4 * DAY,
        start=datetime(2024, 1, 30, tzinfo=UTC),
    )  # fmt: skip
    res = resources(tmp_path, catalog_path, path)
    instance = dg.DagsterInstance.ephemeral()

    first = training_metadata(build(res, instance))
    assert (first["row_groups"], first["row_groups_reused"]) == (3, 0)
    append_day(path)
    refreshed = training_metadata(build(res, instance))
    assert (refreshed["row_groups"], refreshed["row_groups_reused"]) == (3, 2)
    # Planned from the chunks' facts: the chunks behind the copied row groups are not opened.
    opened = [_chunks_opened(m["details"]) for m in (first, refreshed)]
    assert 0 < opened[1][0] < opened[0][0] <= opened[0][1]
    assert refreshed["gate"] == "passed"
    # Judged against the profile the first build published.
    assert "the profile of" in refreshed["details"] and "a first build" in first["details"]
    published = pq.read_metadata(tmp_path / "out" / training_file_key(PAIR))
    assert (published.num_rows, published.num_row_groups) == (5 * DAY, 3)


def _chunks_opened(details: str) -> tuple[int, int]:
    """(chunks opened, chunks) from a training file's details table."""
    header, _, row = details.splitlines()[:3]
    cells = dict(zip(header.strip("|").split(" | "), row.strip("|").split(" | "), strict=True))
    number = lambda text: int(text.strip().replace(",", ""))  # noqa: E731
    return number(cells["chunks opened"]), number(cells["of chunks"])


def test_a_chunk_deleted_after_its_checkpoint_step_is_extracted_again_by_the_training_step(
    tmp_path: Path, mini: tuple[Catalog, Path], mini_warehouse: Path, materialized: dict
) -> None:
    """A lifecycle rule or a person deleted a chunk between the checkpoint step and the merge:
    the training step extracts that table again and publishes the same file."""
    import shutil

    _, catalog_path = mini
    built = materialized["root"]
    shutil.copytree(built / "ckpt", tmp_path / "ckpt")
    shutil.copytree(built / "out", tmp_path / "out")
    published = (built / "out" / training_file_key(PAIR)).read_bytes()
    lost = sorted((tmp_path / "ckpt" / PAIR).glob("lag_*/*.parquet"))[0]
    lost.unlink()
    res = resources(tmp_path, catalog_path, mini_warehouse)
    run = dg.materialize(
        [training_file], partition_key=PAIR, resources=res,
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert run.success and lost.exists()
    assert (tmp_path / "out" / training_file_key(PAIR)).read_bytes() == published
    details = str(training_metadata(run)["details"])
    header, _, row = details.splitlines()[:3]
    cells = dict(zip(header.split("|"), row.split("|"), strict=True))
    assert cells[" chunks extracted again "].strip() == "1"


def test_a_pair_step_reads_as_of_the_shared_checkpoints_cut(
    tmp_path: Path, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> None:
    """Minutes appended between the shared step and a pair's step: the pair reads as of the
    shared step's cut (recorded in the checkpoints' metadata), so its spine does not run past
    the shared tables and the gate passes; the next shared step moves the cut on."""
    catalog, catalog_path = mini
    path = warehouses.copy(tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=3 * DAY)
    res = resources(tmp_path, catalog_path, path)
    instance = dg.DagsterInstance.ephemeral()

    def cut_of(run: dg.ExecuteInProcessResult, node: str) -> set[str]:
        return {str(m.metadata["cut"].value) for m in run.asset_materializations_for_node(node)}

    shared = dg.materialize([shared_checkpoints], resources=res, instance=instance)
    assert shared.success
    (shared_cut,) = cut_of(shared, "shared_checkpoints")
    grown = EmbeddedWarehouse(path, read_only=False)
    try:
        grown.append(30)
    finally:
        grown.close()
    run = dg.materialize(
        [pair_checkpoints, training_file], partition_key=PAIR, resources=res, instance=instance
    )
    assert run.success  # every gate check passed: no ragged tail against the shared tables
    assert cut_of(run, "pair_checkpoints") == {shared_cut}
    rows = pq.read_metadata(tmp_path / "out" / training_file_key(PAIR)).num_rows
    again = dg.materialize([shared_checkpoints], resources=res, instance=instance)
    (later,) = cut_of(again, "shared_checkpoints")
    assert later > shared_cut
    run = dg.materialize(
        [pair_checkpoints, training_file], partition_key=PAIR, resources=res, instance=instance
    )
    assert run.success and cut_of(run, "pair_checkpoints") == {later}
    assert pq.read_metadata(tmp_path / "out" / training_file_key(PAIR)).num_rows > rows

    # The warehouse created anew since the shared step (as upstream jobs may replace tables):
    # nothing existed at the shared cut, so the pair reads as of its own instead of failing.
    from bqx_assets.core.warehouse.embedded import create_warehouse

    create_warehouse(path, catalog, pairs=MINI_PAIRS, rows=3 * DAY).close()
    run = dg.materialize([pair_checkpoints], partition_key=PAIR, resources=res, instance=instance)
    assert run.success
    (own,) = cut_of(run, "pair_checkpoints")
    assert own > later
