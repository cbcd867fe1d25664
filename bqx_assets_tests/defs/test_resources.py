"""The resources' settings: the core's prices and gate by default, the training window and the
extract mode checked, each refused by name when it cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from bqx_assets.core.costs import Prices
from bqx_assets.core.errors import WindowError
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.defs.resources import PipelineSettings


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
