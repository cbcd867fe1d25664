"""validate_training_file: every check, in order, on a file read from its footer and key column;
a file that cannot be read as a training file is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.validate import CHECK_NAMES, validate_training_file
from bqx_assets.core.merge.coverage import COVERAGE_KEY
from bqx_assets_tests.core.gate import merged
from bqx_assets_tests.core.gate.handmade import ROWS, build, run
from bqx_assets_tests.core.gate.listings import listed


def test_good_file_passes_every_check(tmp_path: Path, expectation: Expectation) -> None:
    report = run(build(tmp_path, expectation), expectation)
    assert [o.name for o in report.outcomes] == list(CHECK_NAMES)
    assert all(o.description == CHECK_DESCRIPTIONS[o.name] for o in report.outcomes)
    assert report.passed, report.summary()
    assert (report.rows, report.columns, report.row_groups) == (
        ROWS,
        len(expectation.columns),
        4,  # 200 rows in groups of 64
    )
    assert report.outcome("row_count").metadata["actual"] == float(ROWS)
    nulls = report.outcome("null_completeness")
    assert [
        (r["family"], r["columns"], r["null share (all nulls)"]) for r in listed(nulls, "families")
    ] == [("agg", 2, "0.00%"), ("base", 1, "0.00%"), ("corr", 2, "0.00%")]
    target = report.outcome("target_horizons").metadata
    assert target["targets_ok"] == 4 and target["actual"] == pytest.approx(1 / ROWS)
    table = report.family_table_markdown()
    # agg expects production's 2.4% for "other" families, plus the 5-point tolerance.
    assert table.splitlines()[2] == (
        "| agg | 2 | 0.00% | 0.00% | 0.00% | - | 0 | 7.4% (2.4% + 5 points) | yes |"
    )
    # Every check has one float for what it measured and one for its bound: what the UI plots.
    for outcome in report.outcomes:
        assert isinstance(outcome.metadata["actual"], float), outcome.name
        assert isinstance(outcome.metadata["threshold"], float), outcome.name
        assert not any(isinstance(v, dict) for v in outcome.metadata.values()), outcome.name
    json.dumps(report.to_dict())  # metadata is JSON-able
    with pytest.raises(KeyError):
        report.outcome("no_such_check")


def test_a_clean_merged_file_passes_every_check_and_splits_merge_and_source_nulls(
    tmp_path: Path,
) -> None:
    report = merged.build(tmp_path)
    assert [o.name for o in report.outcomes] == list(CHECK_NAMES)
    assert report.passed, report.summary()
    families = {
        r["family"]: (r["no row for the key (merge-made)"], r["null in the source's rows"])
        for r in listed(report.outcome("null_completeness"), "families")
    }
    # corr: half the minutes have no ETF row (merge-made); agg: warm-up nulls (the source's).
    assert families["corr"] == ("50.00%", "0.00%")
    assert families["agg"] == ("0.00%", f"{45 / merged.ROWS:.2%}")
    assert families["tri"][0] == "20.00%"
    coverage = report.outcome("table_coverage").metadata
    assert coverage["actual"] == 0.0 and coverage["tables"] == 3
    assert report.profile is not None and report.profile.family("corr") is not None
    assert "| corr | 1 | 50.00% | 50.00% | 0.00% | 50.00% |" in report.family_table_markdown()
    json.dumps(report.to_dict())


def test_a_file_opened_by_the_caller_is_validated_as_its_path(tmp_path: Path) -> None:
    path = merged.merged(tmp_path, merged.clean_data())
    by_path = merged.validate(path)
    with path.open("rb") as opened:
        by_source = validate_training_file(
            "stored://training_eurusd.parquet", merged.EXPECTATION, merged.TH, source=opened
        )
    assert by_source.path == "stored://training_eurusd.parquet"
    assert [(o.name, o.passed, o.metadata) for o in by_source.outcomes] == [
        (o.name, o.passed, o.metadata) for o in by_path.outcomes
    ]


def test_unreadable_file_raises_naming_the_file(tmp_path: Path, expectation: Expectation) -> None:
    path = tmp_path / "training_eurusd.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(ValidationError, match=r"eurusd.*training_eurusd\.parquet"):
        run(path, expectation)
    with pytest.raises(ValidationError, match=r"eurusd: cannot read .*missing\.parquet"):
        run(tmp_path / "missing.parquet", expectation)


def test_a_corrupt_coverage_record_raises_naming_the_file(tmp_path: Path) -> None:
    path = merged.merged(tmp_path, merged.clean_data())
    table = pq.read_table(path)
    metadata = {**table.schema.metadata, COVERAGE_KEY.encode(): b"zstd+base64:garbage"}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    with pytest.raises(ValidationError, match=r"eurusd: .*training_eurusd\.parquet has a corrupt"):
        merged.validate(path)


def test_a_coverage_record_of_another_merge_version_raises_saying_so(tmp_path: Path) -> None:
    path = merged.merged(tmp_path, merged.clean_data())
    table = pq.read_table(path)
    old = json.dumps({"version": 3, "tables": []}).encode()
    pq.write_table(table.replace_schema_metadata({COVERAGE_KEY.encode(): old}), path)
    with pytest.raises(
        ValidationError, match=r"coverage record version 3, expected 4 \(.*build it again\)"
    ):
        merged.validate(path)
