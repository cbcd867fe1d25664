"""no_target_leakage: a feature named like a target, or carrying a target's values, fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets_tests.core.gate.handmade import PAIR, ROWS, Columns, build, run
from bqx_assets_tests.core.gate.listings import listed


def test_no_target_leakage_fails_on_a_leaked_target_column(
    tmp_path: Path, expectation: Expectation
) -> None:
    # The first team's file: base_bqx_{pair}.target_45 prefixed and treated as a feature.
    leaky = Expectation(
        PAIR,
        ROWS,
        (*expectation.columns, "base_bqx__target_45", "base_bqx_target_90"),
        expectation.targets,
        {**expectation.family_of, "base_bqx__target_45": "base", "base_bqx_target_90": "base"},
    )

    def change(cols: Columns) -> None:
        cols["base_bqx__target_45"] = pa.array(np.linspace(-1, 1, ROWS))
        cols["base_bqx_target_90"] = pa.array(np.linspace(-2, 2, ROWS))

    path = build(tmp_path, leaky, change)
    report = run(path, leaky)
    leak = report.outcome("no_target_leakage")
    assert not leak.passed
    assert listed(leak, "leaked") == [
        {"column": "base_bqx__target_45", "why": "named like a target"},
        {"column": "base_bqx_target_90", "why": "named like a target"},
    ]
    assert leak.metadata["actual"] == 2.0 and leak.metadata["threshold"] == 0.0
    assert leak.metadata["by_name"] == 2 and leak.metadata["by_value"] == 0
    assert report.outcome("column_count").passed  # only the leak check catches it
    allowed = Thresholds(min_rows=1, leak_allow=("base_bqx__target_45", "base_bqx_target_90"))
    outcome = run(path, leaky, allowed).outcome("no_target_leakage")
    assert outcome.passed and outcome.metadata["actual"] == 0.0
    assert outcome.metadata["allow_list"] == "base_bqx__target_45, base_bqx_target_90"
    assert "(allow-listed: base_bqx__target_45, base_bqx_target_90)" in str(
        outcome.metadata["summary"]
    )


def test_no_target_leakage_finds_a_target_copied_under_a_feature_name(
    tmp_path: Path, expectation: Expectation
) -> None:
    def change(cols: Columns) -> None:
        cols["agg_bqx__agg_mean_45"] = cols["target_bqx90_h15"]

    path = build(tmp_path, expectation, change)
    leak = run(path, expectation).outcome("no_target_leakage")
    assert not leak.passed
    assert listed(leak, "leaked") == [
        {"column": "agg_bqx__agg_mean_45", "why": "equals target_bqx90_h15 row by row"}
    ]
    no_values = Thresholds(min_rows=1, value_leak=False)
    outcome = run(path, expectation, no_values).outcome("no_target_leakage")
    assert outcome.passed and outcome.metadata["value_comparisons"] == 0


def test_no_target_leakage_accepts_the_series_a_target_leads(
    tmp_path: Path, expectation: Expectation
) -> None:
    # target_bqx{w}_h{h} is bqx_{w} h minutes ahead: same extremes, different rows. Not a leak.
    def change(cols: Columns) -> None:
        series = np.random.default_rng(3).normal(0, 1, ROWS)
        series[[90, 100]] = [5.0, -5.0]  # extremes inside the sampled middle row group
        cols["base_bqx__bqx_45"] = pa.array(series)
        cols["target_bqx45_h15"] = pa.array(np.roll(series, -3))

    leak = run(build(tmp_path, expectation, change), expectation).outcome("no_target_leakage")
    assert leak.passed, leak.metadata
    assert leak.metadata["value_comparisons"] >= 1
