"""`preflight_job`: the preflight as one check per warehouse family, each defect on its family's
check in the run's results, on the embedded warehouse."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg

from bqx_assets.core.catalog import Catalog
from bqx_assets.defs.assets import warehouse_assets, warehouse_key
from bqx_assets.defs.preflight import (
    CHECK,
    FAMILIES,
    PREFLIGHT_JOB,
    preflight_checks,
    preflight_job,
)
from bqx_assets_tests.defs.pipeline import resources


def _run(tmp_path: Path, catalog_path: Path, warehouse: Path) -> dict[str, dg.AssetCheckEvaluation]:
    defs = dg.Definitions(
        assets=warehouse_assets,
        asset_checks=[preflight_checks],
        jobs=[preflight_job],
        resources=resources(tmp_path, catalog_path, warehouse),
    )
    result = defs.resolve_job_def(PREFLIGHT_JOB).execute_in_process(raise_on_error=False)
    assert result.success
    return {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}


def test_preflight_job_passes_every_family_of_a_clean_warehouse(
    mini: tuple[Catalog, Path], mini_warehouse: Path, tmp_path: Path
) -> None:
    checks = _run(tmp_path, mini[1], mini_warehouse)
    assert set(checks) == set(FAMILIES)
    assert all(c.passed and c.check_name == CHECK for c in checks.values())
    assert checks["agg"].metadata["full_build_bytes"].value > 0


def test_preflight_job_shows_a_defect_on_its_family_only(
    mini: tuple[Catalog, Path], mini_warehouse: Path, tmp_path: Path
) -> None:
    catalog = mini[0]
    absent = dataclasses.replace(catalog.tables["tmp_eurusd"], name="tmp_eurusd_absent")
    edited = dataclasses.replace(catalog, tables={**catalog.tables, absent.name: absent})
    checks = _run(tmp_path, edited.dump(tmp_path / "c.json"), mini_warehouse)
    failed = {f for f, c in checks.items() if not c.passed}
    assert failed == {"tmp"}
    line = f"table {catalog.features_dataset}.tmp_eurusd_absent: does not exist"
    assert checks["tmp"].description == line
    assert checks["tmp"].metadata["defect_lines"].value == f"- {line}"
    assert checks["tmp"].asset_key == warehouse_key("tmp")
