"""The resources' settings: the core's prices and gate by default, the training window and the
extract mode checked, each refused by name when it cannot be used."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bqx_assets.core.costs import Prices
from bqx_assets.core.errors import ValidationError, WindowError
from bqx_assets.core.gate.thresholds import DEFAULTS, THRESHOLD_FIELDS, ThresholdField, Thresholds
from bqx_assets.defs.environment import resources_for
from bqx_assets.defs.resources import GateConfig, PipelineSettings
from bqx_assets_tests.core.gate import handmade


def test_pipeline_settings_default_to_the_cores_prices_and_gate() -> None:
    settings = PipelineSettings()
    assert settings.bq_price_per_tib == Prices().storage_read_tib
    assert settings.thresholds() == Thresholds()


def test_a_start_and_a_rolling_length_in_the_settings_are_one_error() -> None:
    settings = PipelineSettings(window_start="2024-01-30", window_days=2)
    with pytest.raises(WindowError, match="BQX_WINDOW_START or BQX_WINDOW_DAYS"):
        settings.training_window()
    rolling = PipelineSettings(window_days=2, window_end="2024-02-01").training_window()
    assert rolling.rolling and rolling.days == 2


def test_the_extract_mode_is_one_of_the_modes_or_an_error_naming_them() -> None:
    assert PipelineSettings().mode() == "read"
    assert PipelineSettings(extract_mode="export").mode() == "export"
    with pytest.raises(ValueError, match="extract_mode 'copy' is not one of read, export"):
        PipelineSettings(extract_mode="copy").mode()


def test_work_folders_are_made_under_the_workdir(tmp_path: Path) -> None:
    settings = PipelineSettings(workdir=str(tmp_path / "work"))
    path = settings.work_path("extract", "eurusd")
    assert path == tmp_path / "work" / "extract" / "eurusd" and path.is_dir()


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
    settings = PipelineSettings(gate=GateConfig(**handmade.OTHER.as_dict()))
    assert settings.thresholds() == handmade.OTHER
    window = PipelineSettings(
        window_start="2024-01-10", gate=GateConfig(**handmade.OTHER.as_dict())
    )
    assert window.thresholds().key_range == (
        datetime(2024, 1, 10, tzinfo=UTC),
        handmade.OTHER.key_end,
    )
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
