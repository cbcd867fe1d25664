"""profile_drift: a build judged against the profile of the pair's last published file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from bqx_assets.core.gate.drift import SERIES_BUILDS, profile_drift
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets_tests.core.gate.listings import column, listed
from bqx_assets_tests.core.gate.merged import ROWS, build, clean_data, merged, validate


def test_a_first_build_passes_and_says_it_had_no_history(tmp_path: Path) -> None:
    outcome = build(tmp_path).outcome("profile_drift")
    meta = outcome.metadata
    assert outcome.passed and meta["judged_against"] == "none: first build of the pair"
    assert meta["actual"] == meta["threshold"] == 0.0
    # Its families' null shares, a number each, plotted from the first build on.
    assert meta["null_share_corr"] == pytest.approx(0.5)
    assert listed(outcome, "series") == [
        {"family": "agg", "this build": "1.56%"},
        {"family": "corr", "this build": "50.00%"},
        {"family": "tri", "this build": "20.00%"},
    ]


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
    drifted = {(r["column"], r["problem"]) for r in listed(outcome, "drifted_columns")}
    assert drifted == {
        ("agg_bqx__agg_std_45", "null share moved"),
        ("agg_bqx__agg_mean_45", "became constant"),
        ("tri_agg_bqx_eur_usd_gbp__tri_mean_45", "magnitude jumped"),
    }
    (agg,) = listed(outcome, "drifted_families")
    assert agg["family"] == "agg" and agg["before"] == "1.56%"
    assert meta["actual"] == 4.0 and meta["threshold"] == 0.0  # a family and three columns
    assert (meta["families_drifted"], meta["columns_drifted"]) == (1, 3)
    th = Thresholds()
    assert f"magnitudes {th.drift_range_factor:g}x" in str(meta["summary"])
    # A wider range factor lets the unit change through; the rest still drifts.
    wide = Thresholds(min_rows=1, drift_range_factor=10_000)
    again = validate(merged(tmp_path / "wide", data), history, wide).outcome("profile_drift")
    assert again.metadata["columns_drifted"] == 2 and not again.passed
    assert "magnitude jumped" not in column(again, "drifted_columns", "problem")
    assert "magnitudes 10000x" in str(again.metadata["summary"])


def test_drift_names_a_column_that_became_all_null(tmp_path: Path, history: Profile) -> None:
    data = clean_data()
    data["corr_etf_idx_eurusd_spy"][1]["corr_45"][:] = np.nan
    report = validate(merged(tmp_path, data), history)
    outcome = report.outcome("profile_drift")
    assert column(outcome, "drifted_columns", "column") == ["corr_etf_idx_spy__corr_45"]
    assert column(outcome, "drifted_columns", "problem") == ["became all-null"]
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
    outcome = validate(merged(tmp_path, clean_data()), before).outcome("profile_drift")
    assert listed(outcome, "drifted_columns") == [
        {
            "column": str(columns.column("column")[0]),
            "problem": "retyped",
            "before -> now": "float32 -> double",
        }
    ]


def test_drift_shows_each_familys_null_share_over_the_published_builds(
    history: Profile,
) -> None:
    """The series: a column per published profile (oldest first, at most SERIES_BUILDS) and
    this build, a row per family; a family a build did not have shows as '-'."""
    published = [
        replace(history, created=f"2024-01-{day:02d}T06:00:00+00:00", families=families)
        for day, families in [
            (20, history.families),
            (19, history.families[:2]),
            *((d, history.families) for d in range(18, 18 - SERIES_BUILDS, -1)),
        ]
    ]
    outcome = profile_drift(history, published[0], Thresholds(), published)
    assert outcome.passed
    (_, *heads) = listed(outcome, "series")[0]
    assert len(heads) == SERIES_BUILDS + 1 and heads[-1] == "this build"
    assert heads[0] == "2024-01-11 06:00:00" and heads[-2] == "2024-01-20 06:00:00"
    tri = listed(outcome, "series")[2]
    assert tri["family"] == "tri" and tri["2024-01-19 06:00:00"] == "-"
    assert tri["2024-01-20 06:00:00"] == tri["this build"] == "20.00%"


def test_a_file_that_grew_may_dilute_its_earlier_nulls_without_drift(history: Profile) -> None:
    """An all-time window grows: the nulls of its first days (rolling windows warming up) weigh
    less each day added. A share that fell as the new rows dilute it is no drift; the same fall
    in a file of unchanged length is."""
    import pyarrow.compute as pc

    rows = history.rows * 5 // 3
    keep = history.rows / rows  # the new rows have no null: shares x 0.6
    columns = history.columns
    index = columns.schema.get_field_index("null_share")
    diluted = columns.set_column(
        index, "null_share", pc.multiply(columns.column("null_share"), keep)
    )
    families = tuple(replace(f, null_share=f.null_share * keep) for f in history.families)
    grown = replace(history, rows=rows, families=families, columns=diluted)
    assert profile_drift(grown, history, Thresholds()).passed
    same_length = replace(grown, rows=history.rows)
    outcome = profile_drift(same_length, history, Thresholds())
    assert not outcome.passed
    assert "corr" in {r["family"] for r in listed(outcome, "drifted_families")}
