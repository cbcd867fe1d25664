"""Each fault the synthetic warehouse can inject is caught by the gate check that names it, and
nothing is published; a clean production-shaped warehouse passes every check at the defaults.

The pipeline runs as deployed (Dagster assets: extraction, merge, gate, publish, profile) on the
mini catalog (every family and scope, 16 tables a pair) over 3,000 minutes: two days and a
morning, so the ETF's trading hours, late tri sources and warm-ups shape the nulls as in
production. Duplicate timestamps are an extraction error before any gate:
test_extraction.py::test_duplicate_keys_fail_that_table_and_keep_the_others shows it (and
test_merge.py::test_duplicate_keys_in_a_feature_table_are_an_error for the merge); here
test_duplicate_timestamps_fail_extraction_by_name shows it on the injected fault.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from conftest import MINI_PAIRS, mini_catalog

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.profile import profile_key
from bqx_assets.core.gate.validation import CHECK_NAMES
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.warehouse.embedded import create_warehouse
from bqx_assets.defs.assets import (
    pair_checkpoints,
    shared_checkpoints,
    training_file,
    training_profile,
)
from bqx_assets.defs.frame_io import FrameIOManagerFactory
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import CheckpointStore, EmbeddedWarehouseResource, PipelineSettings

PAIR = "eurusd"
ROWS = 3_000


@dataclass(frozen=True)
class Build:
    root: Path
    result: dg.ExecuteInProcessResult
    pair: str

    @property
    def checks(self) -> dict[str, dg.AssetCheckEvaluation]:
        return {e.check_name: e for e in self.result.get_asset_check_evaluations()}

    @property
    def failed(self) -> set[str]:
        return {name for name, e in self.checks.items() if not e.passed}

    def meta(self, check: str) -> dict[str, object]:
        return {k: v.value for k, v in self.checks[check].metadata.items()}

    @property
    def published(self) -> bool:
        return (self.root / "out" / training_file_key(self.pair)).exists()

    @property
    def quarantined(self) -> list[str]:
        return sorted(p.name for p in (self.root / "out").glob("quarantine/*.parquet"))


@pytest.fixture(scope="module")
def catalog_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Path]:
    catalog = mini_catalog()
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    catalog.dump(path)
    return catalog, path


def build(
    root: Path,
    catalog_file: tuple[Catalog, Path],
    faults: tuple[str, ...] = (),
    *,
    seed: int = 7,
    pair: str = PAIR,
) -> Build:
    """Create the warehouse (with `faults`), checkpoint the shared tables, then materialize the
    pair as its job does. Checkpoints are made afresh; the output root (published files and
    profiles) is kept from earlier builds under the same root."""
    catalog, path = catalog_file
    warehouse = root / "warehouse.duckdb"
    warehouse.unlink(missing_ok=True)
    shutil.rmtree(root / "ckpt", ignore_errors=True)
    shutil.rmtree(root / "cache", ignore_errors=True)
    create_warehouse(warehouse, catalog, pairs=MINI_PAIRS, rows=ROWS, seed=seed, faults=faults)
    resources = {
        "warehouse": EmbeddedWarehouseResource(path=str(warehouse)),
        "checkpoints": CheckpointStore(root=str(root / "ckpt"), cache_dir=str(root / "cache")),
        "settings": PipelineSettings(
            catalog_path=str(path), workdir=str(root / "work"), min_rows=100
        ),
        "training_io_manager": TrainingFileIOManager(output_root=str(root / "out")),
        "frame_io_manager": FrameIOManagerFactory(base_dir=str(root / "frames")),
    }
    instance = dg.DagsterInstance.ephemeral()
    shared = dg.materialize([shared_checkpoints], resources=resources, instance=instance)
    assert shared.success
    result = dg.materialize(
        [pair_checkpoints, training_file, training_profile],
        partition_key=pair,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    return Build(root, result, pair)


def assert_clean(b: Build) -> None:
    assert b.result.success, b.failed
    assert set(b.checks) == set(CHECK_NAMES) and not b.failed, b.failed
    assert b.published and not b.quarantined
    assert (b.root / "out" / profile_key(b.pair)).exists()
    assert (b.root / "frames" / "training_profile" / f"{b.pair}.parquet").exists()


def assert_caught(b: Build, checks: set[str], also: frozenset[str] = frozenset()) -> None:
    """The build failed `checks` (and perhaps `also`, nothing else), published nothing and
    promoted no profile."""
    assert not b.result.success
    assert checks <= b.failed <= checks | also, {n: b.checks[n].description for n in b.failed}
    assert not b.published and len(b.quarantined) == 1
    assert not (b.root / "out" / profile_key(b.pair)).exists()


# -- a clean warehouse -----------------------------------------------------------------------
def test_a_clean_realistic_warehouse_passes_every_check_and_publishes_a_profile(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file)
    assert_clean(b)
    families = b.meta("null_completeness")["families"]
    assert families["corr"]["merge_null_share"] > 0.3  # the ETF's closed hours: no rows
    assert families["tri"]["merge_null_share"] > 0.0  # a late-starting source
    materialization = b.result.asset_materializations_for_node("training_profile")[0]
    assert "null_share_corr" in materialization.metadata
    assert "| corr |" in materialization.metadata["families"].value
    # Built again from the same data: judged against the profile just published, no drift.
    again = build(tmp_path, catalog_file)
    assert_clean(again)
    assert "within tolerance" in again.checks["profile_drift"].description


# -- injected faults, each caught by the check that names it ---------------------------------
# Slow: a pipeline build each (~30 s on two cores); the clean build above runs in every suite.
@pytest.mark.slow
def test_a_ragged_tail_fails_table_coverage_naming_the_tables(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file, ("ragged=1:agg+lag+tmp",))
    assert_caught(b, {"table_coverage"})
    tables = b.meta("table_coverage")["tables"]
    assert set(tables) <= {f"agg_{PAIR}", f"lag_{PAIR}_45", f"tmp_{PAIR}"} and tables
    assert all(t["newest_minutes_missed"] > 0 for t in tables.values())


@pytest.mark.slow
def test_a_stale_source_fails_table_coverage(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file, ("stale=3:tri_agg_bqx_eur_usd_gbp",))
    # The mini catalog's one tri source starts 37% of the way in: 3% more takes the family
    # over its expected share too.
    assert_caught(b, {"table_coverage"}, also=frozenset({"null_completeness"}))
    info = b.meta("table_coverage")["tables"]["tri_agg_bqx_eur_usd_gbp"]
    assert info["newest_minutes_missed"] == 90 and "stops 90 rows" in info["why"]


@pytest.mark.slow
def test_1970_keys_fail_table_coverage_and_null_completeness(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file, (f"unit:corr_etf_idx_{PAIR}_spy",))
    assert_caught(b, {"table_coverage", "null_completeness"})
    assert list(b.meta("table_coverage")["tables"]) == [f"corr_etf_idx_{PAIR}_spy"]
    assert b.meta("null_completeness")["all_null_by_family"] == {"corr": 7}


@pytest.mark.slow
def test_an_all_null_family_fails_null_completeness(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file, ("allnull:regime",))
    assert_caught(b, {"null_completeness"})
    meta = b.meta("null_completeness")
    assert meta["all_null_by_family"] == {"regime": 13}
    assert meta["families_over_threshold"] == {"regime": 1.0}


@pytest.mark.slow
def test_a_target_leaked_under_an_innocent_name_fails_no_target_leakage(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file, (f"leak:agg_{PAIR}",))
    assert_caught(b, {"no_target_leakage"})
    leaked = b.meta("no_target_leakage")["by_value"]
    assert list(leaked.values()) == ["target_bqx45_h15"]
    assert next(iter(leaked)).startswith("agg__")


@pytest.mark.slow
def test_duplicate_timestamps_fail_extraction_by_name(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    b = build(tmp_path, catalog_file, (f"dupkeys:agg_{PAIR}",))
    assert not b.result.success and not b.published
    failure = next(e for e in b.result.all_events if e.is_step_failure)
    assert f"agg_{PAIR}" in str(failure.event_specific_data) and "duplicate" in str(
        failure.event_specific_data
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dropcol", "retype"])
def test_a_dropped_or_retyped_column_fails_before_the_gate_by_name(
    tmp_path: Path, catalog_file: tuple[Catalog, Path], kind: str
) -> None:
    b = build(tmp_path, catalog_file, (f"{kind}:agg_{PAIR}",))
    assert not b.result.success and not b.published
    failure = next(e for e in b.result.all_events if e.is_step_failure)
    assert f"agg_{PAIR}" in str(failure.event_specific_data)


@pytest.mark.slow
def test_a_doubled_null_share_fails_profile_drift_against_the_last_build(
    tmp_path: Path, catalog_file: tuple[Catalog, Path]
) -> None:
    assert_clean(build(tmp_path, catalog_file))
    b = build(tmp_path, catalog_file, ("nulls=2:agg+csi",))
    assert "profile_drift" in b.failed and not b.result.success
    meta = b.meta("profile_drift")
    assert set(meta["families"]) == {"agg", "csi"}
    assert meta["actual"]["null_share_moved"] > 0
    # The published file and its profile are still the clean build's.
    assert (tmp_path / "out" / profile_key(PAIR)).exists()
