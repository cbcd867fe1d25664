"""`bqx validate`: the gate checks on a file, exit 0 when it passes and 1 when it fails, one JSON
line last; bad arguments are refused with a message naming them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bqx_assets import cli
from bqx_assets.cli.commands.validate import thresholds_from_args
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.thresholds import DEFAULTS, THRESHOLD_FIELDS, Thresholds
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
    assert result["checks"]["row_count"]["metadata"]["min_rows"] == 100


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
    families = result["checks"]["null_completeness"]["metadata"]["families"]
    corr = next(f for f in families if f["family"] == "corr")
    assert corr["allowed (expected + tolerance)"].startswith("80.0% (50.0% + 30 points)")


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


# -- the flags, derived from the thresholds ------------------------------------------------
def _argv(th: Thresholds) -> list[str]:
    """The `bqx validate` flags that ask for `th`."""
    argv: list[str] = []
    for f in THRESHOLD_FIELDS:
        value = getattr(th, f.name)
        if f.kind == "bool":
            argv.append(f.flag if value else f"--no-{f.flag[2:]}")
        elif f.kind == "per_family":
            argv += [a for k, v in value.items() for a in (f.flag, f"{k}={v}")]
        elif f.kind == "names":
            argv += [a for name in value for a in (f.flag, name)]
        elif f.kind == "time":
            argv += [f.flag, value.isoformat()]
        else:
            argv += [f.flag, str(value / f.knob.scale if f.knob.scale != 1 else value)]
    return argv


def _parse(*argv: str) -> Thresholds:
    args = cli.build_parser().parse_args(["validate", "f.parquet", "--pair", "eurusd", *argv])
    return thresholds_from_args(args)


def _validate_help() -> dict[str, str]:
    """Each option of `bqx validate` -> its help text."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["validate"]  # type: ignore[union-attr]
    return {o: a.help or "" for a in sub._actions for o in a.option_strings}


def test_the_flags_bqx_validate_had_are_kept_and_every_field_has_one() -> None:
    options = set(_validate_help())
    kept = {"--min-rows", "--max-rows", "--target-null-share", "--feature-null-share",
            "--family-null-share", "--null-tolerance", "--no-require-coverage", "--min-coverage",
            "--tail-tolerance-rows", "--newest-null-tolerance", "--allow-leak", "--key-start",
            "--key-end", "--no-value-leak", "--max-footer-mb"}  # fmt: skip
    assert kept <= options
    assert {f.flag for f in THRESHOLD_FIELDS} <= options


def test_no_flag_gives_the_defaults_and_every_flag_reaches_its_field() -> None:
    assert _parse() == DEFAULTS
    assert _parse(*_argv(handmade.OTHER)) == handmade.OTHER
    assert _parse(*_argv(DEFAULTS)) == DEFAULTS
    assert _parse("--max-footer-mb", "0.5").max_footer_bytes == 2**19
    # A per-family flag replaces the defaults: families not given fall back to the general one.
    assert _parse("--family-null-share", "corr=0.5").family_null_share == {"corr": 0.5}


def test_the_help_shows_each_default_from_the_dataclass() -> None:
    help_of = _validate_help()
    assert f"default {DEFAULTS.min_rows:,})" in help_of["--min-rows"]
    assert f"default {DEFAULTS.null_share_tolerance:g})" in help_of["--null-tolerance"]
    family = " ".join(f"{k}={v:g}" for k, v in DEFAULTS.family_null_share.items())
    assert f"default {family};" in help_of["--family-null-share"]
    assert f"default {DEFAULTS.max_footer_bytes / 2**20:g})" in help_of["--max-footer-mb"]
    assert "default 2000-01-01)" in help_of["--key-start"]
    # Other fields are named by their flags.
    assert "--family-null-share" in help_of["--feature-null-share"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--family-null-share", "corr"], "--family-null-share 'corr': expected FAMILY=SHARE"),
        (["--family-min-coverage", "=0.1"], "--family-min-coverage '=0.1': expected FAMILY="),
        (["--key-start", "monday"], "--key-start 'monday': Invalid isoformat"),
        (["--min-rows", "300", "--max-rows", "200"], "min_rows 300 > max_rows 200"),
        (["--newest-null-tolerance", "2"], "newest_null_tolerance 2.0 is not from 0 to 1"),
    ],
)
def test_a_bad_flag_value_is_refused_by_name(argv: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _parse(*argv)
