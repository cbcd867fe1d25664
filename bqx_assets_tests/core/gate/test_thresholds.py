"""Thresholds defined once: the dataclass's fields give the defaults, the `bqx validate` flags and
the Dagster config, and a value set by a flag or by config reaches `Thresholds`."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from bqx_assets import cli
from bqx_assets.cli.commands.validate import thresholds_from_args
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.thresholds import (
    DEFAULTS,
    THRESHOLD_FIELDS,
    UNIT_TEXT,
    ThresholdField,
    Thresholds,
)
from bqx_assets.core.warehouse import DateRange
from bqx_assets.defs.environment import resources_for
from bqx_assets.defs.resources import GateConfig, PipelineSettings

OTHER = Thresholds(
    min_rows=10,
    max_rows=20,
    target_null_share=0.2,
    feature_null_share=0.3,
    family_null_share={"x": 0.4, "y": 0.5},
    null_share_tolerance=0.06,
    family_null_tolerance={"x": 0.07},
    require_coverage=False,
    min_coverage=0.8,
    family_min_coverage={"y": 0.9},
    tail_tolerance_rows=3,
    newest_null_tolerance=0.11,
    drift_family_null_share=0.012,
    drift_column_null_share=0.013,
    drift_relative=0.5,
    drift_range_factor=3.0,
    leak_allow=("a__target_1", "b__target_2"),
    key_start=datetime(2024, 1, 1, tzinfo=UTC),
    key_end=datetime(2024, 2, 1, 12, tzinfo=UTC),
    value_leak=False,
    max_footer_bytes=3 * 2**20,
    max_names=5,
)
"""Every field away from its default."""


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


# -- the dataclass ---------------------------------------------------------------------------
def test_every_threshold_has_a_line_a_unit_and_one_flag() -> None:
    assert [f.name for f in THRESHOLD_FIELDS] == [f.name for f in dataclasses.fields(Thresholds)]
    for f in THRESHOLD_FIELDS:
        assert f.knob.help and "\n" not in f.knob.help and f.knob.unit in UNIT_TEXT, f.name
    flags = [f.flag for f in THRESHOLD_FIELDS]
    assert len(set(flags)) == len(flags)
    assert all(getattr(OTHER, f.name) != f.default for f in THRESHOLD_FIELDS)


def test_defaults_are_production_s_and_round_trip_as_plain_values() -> None:
    assert Thresholds() == DEFAULTS
    assert DEFAULTS.family_null_share is not Thresholds().family_null_share  # copied
    for th in (DEFAULTS, OTHER):
        assert Thresholds.from_dict(th.as_dict()) == th
    assert Thresholds.from_dict({}) == DEFAULTS
    assert DEFAULTS.key_range == (DEFAULTS.key_start, DEFAULTS.key_end)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_row": 5}, "unknown min_row; known: min_rows, max_rows"),
        ({"min_rows": "many"}, "min_rows: could not convert string to float: 'many'"),
        ({"min_rows": 2.5}, "min_rows: a whole number, not 2.5"),
        ({"value_leak": "yes"}, "value_leak: true or false, not 'yes'"),
        ({"max_rows": True}, "max_rows: a number, not True"),
        ({"leak_allow": "a__target_1"}, "leak_allow: a list of names, not one string"),
        ({"family_null_share": {"corr": "half"}}, "family_null_share: could not convert"),
        ({"key_start": "yesterday"}, "key_start: Invalid isoformat string"),
    ],
)
def test_a_value_of_the_wrong_shape_is_refused_by_name(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=f"gate thresholds: {message}"):
        Thresholds.from_dict(values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_rows": 300, "max_rows": 200}, "min_rows 300 > max_rows 200"),
        ({"target_null_share": 1.5}, "target_null_share 1.5 is not from 0 to 1"),
        ({"family_null_share": {"corr": -0.1}}, "family_null_share -0.1 is not from 0 to 1"),
        ({"tail_tolerance_rows": -1}, "tail_tolerance_rows -1 is not at least 0"),
        ({"drift_range_factor": 0.5}, "drift_range_factor 0.5 is not at least 1"),
        ({"key_end": datetime(1999, 1, 1, tzinfo=UTC)}, "key_start .* is not before key_end"),
    ],
)
def test_thresholds_out_of_their_range_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=f"gate thresholds: {message}"):
        Thresholds(**change)


def test_within_holds_keys_to_a_window_where_it_is_bounded() -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    assert DEFAULTS.within(DateRange(start, None)).key_range == (start, DEFAULTS.key_end)
    assert DEFAULTS.within(DateRange()) == DEFAULTS


# -- the command line ------------------------------------------------------------------------
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
    assert _parse(*_argv(OTHER)) == OTHER
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


# -- the Dagster config ----------------------------------------------------------------------
def _fields_of(config: type[dg.Config]) -> dict[str, Any]:
    return dict(config.model_fields)


def test_the_gate_config_has_a_field_per_threshold_with_its_default_and_line() -> None:
    fields = _fields_of(GateConfig)
    assert list(fields) == [f.name for f in THRESHOLD_FIELDS]
    by_name: dict[str, ThresholdField] = {f.name: f for f in THRESHOLD_FIELDS}
    for name, spec in fields.items():
        assert spec.description.startswith(by_name[name].knob.help), name
    assert GateConfig().model_dump() == DEFAULTS.as_dict()
    assert PipelineSettings().thresholds() == DEFAULTS
    # Each config holds its own copies of the mutable defaults.
    assert GateConfig().family_null_share is not GateConfig().family_null_share


def test_config_values_reach_the_thresholds_and_the_window_holds_the_keys() -> None:
    settings = PipelineSettings(gate=GateConfig(**OTHER.as_dict()))
    assert settings.thresholds() == OTHER
    window = PipelineSettings(window_start="2024-01-10", gate=GateConfig(**OTHER.as_dict()))
    assert window.thresholds().key_range == (datetime(2024, 1, 10, tzinfo=UTC), OTHER.key_end)
    bad = PipelineSettings(gate=GateConfig(min_rows=300, max_rows=200))
    with pytest.raises(ValidationError, match="min_rows 300 > max_rows 200"):
        bad.thresholds()


@dg.asset
def _gate(settings: PipelineSettings) -> dict[str, Any]:
    return settings.thresholds().as_dict()


def _run_thresholds(
    settings: PipelineSettings, run_config: dict[str, Any] | None = None
) -> Thresholds:
    result = dg.materialize([_gate], resources={"settings": settings}, run_config=run_config)
    return Thresholds.from_dict(result.output_for_node("_gate"))


def test_a_run_s_config_and_bqx_min_rows_reach_the_thresholds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = {"gate": {"min_rows": 7, "family_null_share": {"x": 0.2}, "leak_allow": ["a"]}}
    run = {"resources": {"settings": {"config": config}}}
    th = _run_thresholds(PipelineSettings(), run)
    assert (th.min_rows, th.family_null_share, th.leak_allow) == (7, {"x": 0.2}, ("a",))
    assert th.max_rows == DEFAULTS.max_rows
    # The local deployment bounds rows for its small warehouse, from BQX_MIN_ROWS when set.
    monkeypatch.setenv("BQX_MIN_ROWS", "42")
    assert _run_thresholds(resources_for("local")["settings"]).min_rows == 42
    monkeypatch.delenv("BQX_MIN_ROWS")
    assert _run_thresholds(resources_for("local")["settings"]).min_rows == 100
    assert _run_thresholds(resources_for("prod")["settings"]) == DEFAULTS
