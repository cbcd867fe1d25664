"""`bqx validate`: the gate checks on a file, exit 0 when it passes and 1 when it fails, one JSON
line last; bad arguments are refused with a message naming them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bqx_assets import cli
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.layout import KEY
from bqx_assets_tests.core.gate import handmade, merged

PAIR = handmade.PAIR


@pytest.fixture
def expectation() -> Expectation:
    return Expectation.for_pair(handmade.tiny_catalog(), PAIR, handmade.ROWS)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    return handmade.tiny_catalog().dump(tmp_path / "catalog.json")


def test_command_passes_with_exit_0_and_a_json_line(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = handmade.build(tmp_path, expectation)
    argv = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    argv += ["--no-require-coverage"]  # a hand-made file: no merge coverage record
    assert cli.main([*argv, "--spine-rows", str(handmade.ROWS), "--min-rows", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "PASSED" in out[0]
    result = json.loads(out[-1])
    assert result["passed"] is True and result["rows"] == handmade.ROWS
    assert result["row_groups"] == 4  # 200 rows in groups of 64
    assert set(result["checks"]) == set(CHECK_NAMES)
    assert result["checks"]["row_count"]["metadata"]["threshold"]["min_rows"] == 100


def test_command_fails_with_exit_1_and_names_the_check(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = handmade.build(tmp_path, expectation, lambda c: c.pop("target_bqx45_h15"))
    targets = handmade.write(
        tmp_path / "targets.parquet", {KEY: handmade.good_columns(expectation)[KEY]}
    )
    argv = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    argv += ["--no-require-coverage"]
    code = cli.main(
        [*argv, "--targets", str(targets), "--min-rows", "100", "--family-null-share", "corr=0.5"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "[FAIL] target_horizons" in out
    result = json.loads(out.splitlines()[-1])
    assert result["failed"] == ["column_count", "target_horizons"]
    assert result["checks"]["target_horizons"]["metadata"]["missing"] == ["target_bqx45_h15"]
    threshold = result["checks"]["null_completeness"]["metadata"]["threshold"]
    assert threshold["expected_null_share"]["corr"] == 0.5


def test_command_needs_the_spine_and_well_formed_thresholds(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = handmade.build(tmp_path, expectation)
    assert cli.main(["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]) == 1
    assert "--spine-rows" in capsys.readouterr().err
    bad = ["validate", str(path), "--pair", PAIR, "--spine-rows", "5", "--catalog"]
    assert cli.main([*bad, str(catalog_file), "--family-null-share", "corr"]) == 1
    assert "FAMILY=SHARE" in capsys.readouterr().err
    assert cli.main([*bad, str(catalog_file), "--min-rows", "300", "--max-rows", "200"]) == 1
    assert "gate thresholds: min_rows 300 > max_rows 200" in capsys.readouterr().err
    missing = tmp_path / "missing.parquet"
    targets = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    assert cli.main([*targets, "--targets", str(missing)]) == 1
    assert "cannot read targets" in capsys.readouterr().err


def test_a_footer_too_large_is_refused_naming_the_limit(
    tmp_path: Path, expectation: Expectation, catalog_file: Path, capsys: pytest.CaptureFixture
) -> None:
    path = handmade.build(tmp_path, expectation)
    argv = ["validate", str(path), "--pair", PAIR, "--catalog", str(catalog_file)]
    assert cli.main([*argv, "--spine-rows", str(handmade.ROWS), "--max-footer-mb", "0.001"]) == 1
    assert "max_footer_bytes" in capsys.readouterr().err


def test_command_judges_drift_against_a_profile_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = merged.merged(tmp_path, merged.clean_data(), "first.parquet")
    catalog = merged.catalog().dump(tmp_path / "catalog.json")
    base = ["--pair", PAIR, "--catalog", str(catalog), "--spine-rows", str(merged.ROWS)]
    profile = tmp_path / "profile.parquet"
    assert cli.main(["validate", str(first), *base, "--min-rows", "1", "--profile-out",
                     str(profile)]) == 0  # fmt: skip
    capsys.readouterr()
    data = merged.clean_data()
    data["tri_agg_bqx_eur_usd_gbp"][1]["tri_mean_45"][:] *= 1000
    second = merged.merged(tmp_path, data, "second.parquet")
    argv = ["validate", str(second), *base, "--min-rows", "1", "--profile-history", str(profile)]
    assert cli.main(argv) == 1
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["failed"] == ["profile_drift"]
    # A range factor wide enough lets the unit change through.
    assert cli.main([*argv, "--drift-range-factor", "10000"]) == 0
    capsys.readouterr()
    assert cli.main([*argv[:-1], str(tmp_path / "missing.parquet")]) == 1
    assert "cannot read the profile" in capsys.readouterr().err
    other = tmp_path / "gbpusd.profile.parquet"
    other.write_bytes(
        replace(Profile.from_bytes(profile.read_bytes(), "p"), pair="gbpusd").to_bytes()
    )
    assert cli.main([*argv[:-1], str(other)]) == 1
    assert f"is the profile of gbpusd, not {PAIR}" in capsys.readouterr().err
