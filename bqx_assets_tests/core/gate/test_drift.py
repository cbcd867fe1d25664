"""profile_drift: a build judged against the profile of the pair's last published file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets_tests.core.gate.merged import ROWS, build, clean_data, merged, validate


def test_a_first_build_passes_and_says_it_had_no_history(tmp_path: Path) -> None:
    outcome = build(tmp_path).outcome("profile_drift")
    assert outcome.passed and outcome.metadata["actual"] == "no history"
    th = Thresholds()
    assert outcome.metadata["threshold"] == {
        "family_null_share": th.drift_family_null_share,
        "column_null_share": th.drift_column_null_share,
        "relative": th.drift_relative,
        "range_factor": th.drift_range_factor,
    }


def test_the_same_data_again_does_not_drift(tmp_path: Path, history: Profile) -> None:
    report = validate(merged(tmp_path, clean_data()), history)
    assert report.passed, report.summary()
    assert "within tolerance" in report.outcome("profile_drift").metadata["summary"]


def test_drift_names_moved_null_shares_constant_and_jumped_columns(
    tmp_path: Path, history: Profile
) -> None:
    data = clean_data()
    _, cols = data["agg_bqx_eurusd"]
    cols["agg_std_45"][np.random.default_rng(1).random(ROWS) < 0.3] = np.nan  # doubled nulls
    cols["agg_mean_45"][45:] = 1.0  # constant
    _, tri = data["tri_agg_bqx_eur_usd_gbp"]
    tri["tri_mean_45"] *= 1000  # a unit change upstream
    report = validate(merged(tmp_path, data), history)
    outcome = report.outcome("profile_drift")
    assert not outcome.passed
    meta = outcome.metadata
    assert meta["null_share_moved"] == ["agg_bqx__agg_std_45"]
    assert meta["became_constant"] == ["agg_bqx__agg_mean_45"]
    assert meta["range_jumped"] == ["tri_agg_bqx_eur_usd_gbp__tri_mean_45"]
    assert set(meta["families"]) == {"agg"}
    assert {"actual", "expected", "threshold"} <= set(meta)
    # A wider range factor lets the unit change through; the rest still drifts.
    wide = Thresholds(min_rows=1, drift_range_factor=10_000)
    again = validate(merged(tmp_path / "wide", data), history, wide).outcome("profile_drift")
    assert again.metadata["range_jumped"] == [] and not again.passed


def test_drift_names_a_column_that_became_all_null(tmp_path: Path, history: Profile) -> None:
    data = clean_data()
    data["corr_etf_idx_eurusd_spy"][1]["corr_45"][:] = np.nan
    report = validate(merged(tmp_path, data), history)
    meta = report.outcome("profile_drift").metadata
    assert meta["became_all_null"] == ["corr_etf_idx_spy__corr_45"]
    assert "null_completeness" in report.failed


def test_drift_names_a_retyped_column(tmp_path: Path, history: Profile) -> None:
    columns = history.columns
    dtype = columns.column("dtype").to_pylist()
    dtype[0] = "float32"
    before = Profile(
        history.pair,
        history.rows,
        history.created,
        columns.set_column(columns.schema.get_field_index("dtype"), "dtype", pa.array(dtype)),
        history.families,
        history.coverage,
    )
    meta = validate(merged(tmp_path, clean_data()), before).outcome("profile_drift").metadata
    assert meta["retyped"] == [f"{columns.column('column')[0]}: float32 -> double"]
