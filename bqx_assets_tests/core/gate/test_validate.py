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
    assert report.outcome("row_count").metadata["actual"] == ROWS
    nulls = report.outcome("null_completeness").metadata
    none = {"null_share": 0.0, "merge_null_share": 0.0, "source_null_share": 0.0}
    assert nulls["families"] == {
        "agg": {"columns": 2, **none},
        "base": {"columns": 1, **none},
        "corr": {"columns": 2, **none},
    }
    target = report.outcome("target_horizons").metadata
    assert target["actual"] == 4 and target["worst_null_share"] == pytest.approx(1 / ROWS)
    table = report.family_table_markdown()
    # agg expects production's 2.4% for "other" families, plus the 5-point tolerance.
    assert table.splitlines()[2] == "| agg | 2 | 0.00% | 0.00% | 0.00% | - | 0 | 7.4% | yes |"
    json.dumps(report.to_dict())  # metadata is JSON-able
    with pytest.raises(KeyError):
        report.outcome("no_such_check")


def test_a_clean_merged_file_passes_every_check_and_splits_merge_and_source_nulls(
    tmp_path: Path,
) -> None:
    report = merged.build(tmp_path)
    assert [o.name for o in report.outcomes] == list(CHECK_NAMES)
    assert report.passed, report.summary()
    families = report.outcome("null_completeness").metadata["families"]
    # corr: half the minutes have no ETF row (merge-made); agg: warm-up nulls (the source's).
    assert families["corr"]["merge_null_share"] == pytest.approx(0.5)
    assert families["corr"]["source_null_share"] == 0.0
    assert families["agg"]["merge_null_share"] == 0.0
    assert families["agg"]["source_null_share"] == pytest.approx(45 / merged.ROWS)
    assert families["tri"]["merge_null_share"] == pytest.approx(0.2, abs=1e-3)
    coverage = report.outcome("table_coverage").metadata
    assert coverage["actual"]["short_tables"] == 0
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
