"""The pair job as the UI's materialize button and a backfill run it: a pair built twice is judged
the second time against the profile its first build published; a drift large enough fails the
gate and leaves the published file and profile as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.profile import load_history, load_profile, profile_key
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import latest_report
from bqx_assets.core.storage import LocalStorage
from bqx_assets.defs.assets import all_assets
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.jobs import PAIR_JOB, SHARED_JOB, jobs
from bqx_assets.defs.overview import gate_summary
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.defs.pipeline import PAIR, resources

ROWS = 3_000
"""Two days and a morning: the ETF's hours, late sources and warm-ups shape the nulls."""


def _run(
    root: Path, catalog_path: Path, warehouse: Path, out: Path, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """The shared job, then the pair job for PAIR, as the deployment defines them, on
    `warehouse`; the checkpoints under `root`, the training file in `out`."""
    res: dict[str, Any] = resources(root, catalog_path, warehouse)
    res["training_io_manager"] = TrainingFileIOManager(output_root=str(out))
    defs = dg.Definitions(assets=[*all_assets, gate_summary], jobs=jobs, resources=res)
    assert defs.resolve_job_def(SHARED_JOB).execute_in_process(instance=instance).success
    return defs.resolve_job_def(PAIR_JOB).execute_in_process(
        partition_key=PAIR, instance=instance, raise_on_error=False
    )


def _drift(run: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (drift,) = [e for e in run.get_asset_check_evaluations() if e.check_name == "profile_drift"]
    return drift


def _text(evaluation: dg.AssetCheckEvaluation) -> str:
    """What the check's page shows: its summary and its metadata."""
    values = [str(v.value) for v in evaluation.metadata.values()]
    return " ".join([evaluation.description or "", *values])


@pytest.fixture(scope="module")
def clean(warehouses: Warehouses, mini: tuple[Catalog, Path]) -> Path:
    return warehouses.path(mini[0], pairs=MINI_PAIRS, rows=ROWS)


def test_the_second_build_is_judged_against_the_profile_the_first_published(
    tmp_path: Path, mini: tuple[Catalog, Path], clean: Path
) -> None:
    _, catalog_path = mini
    out, instance = tmp_path / "out", dg.DagsterInstance.ephemeral()

    first = _run(tmp_path / "a", catalog_path, clean, out, instance)
    assert first.success
    assert "first build" in _text(_drift(first))
    published = load_profile(LocalStorage(out), PAIR)
    assert published is not None and published.rows == ROWS

    # A second build, from checkpoints made afresh: the same data, another run.
    second = _run(tmp_path / "b", catalog_path, clean, out, instance)
    assert second.success
    drift = _drift(second)
    assert drift.passed and "first build" not in _text(drift)
    assert published.created in _text(drift)  # the first build's profile, by its time
    assert len(load_history(LocalStorage(out), PAIR)) >= 1
    report = latest_report(LocalStorage(out), PAIR)
    assert report is not None and report["run_id"] == second.run_id


def test_a_drift_large_enough_fails_and_keeps_the_published_file_and_profile(
    tmp_path: Path, mini: tuple[Catalog, Path], clean: Path, warehouses: Warehouses
) -> None:
    catalog, catalog_path = mini
    out, instance = tmp_path / "out", dg.DagsterInstance.ephemeral()
    assert _run(tmp_path / "a", catalog_path, clean, out, instance).success
    kept = {k: (out / k).read_bytes() for k in (training_file_key(PAIR), profile_key(PAIR))}

    doubled = warehouses.path(catalog, pairs=MINI_PAIRS, rows=ROWS, faults=("nulls=2:agg+csi",))
    second = _run(tmp_path / "b", catalog_path, doubled, out, instance)

    assert not second.success  # the blocking checks fail the run
    drift = _drift(second)
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
    assert "agg" in _text(drift) and "csi" in _text(drift)
    assert {k: (out / k).read_bytes() for k in kept} == kept
    assert len(load_history(LocalStorage(out), PAIR)) == 1
    report = latest_report(LocalStorage(out), PAIR)
    assert report is not None and report["status"] == "quarantined"
    assert "profile_drift" in report["failed"] and report["run_id"] == second.run_id
