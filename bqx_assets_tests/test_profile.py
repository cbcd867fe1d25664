"""Coverage recorded by the merge, the profile built from the footer, and the checks that use them:
each fault the first team met in its tables is caught by the check that names the table."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets import cli
from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.profile import Profile, load_profile, profile_key, save_profile
from bqx_assets.core.gate.validation import (
    CHECK_NAMES,
    Expectation,
    Thresholds,
    ValidationReport,
    validate_training_file,
)
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge.coverage import COVERAGE_KEY, Coverage, TableCoverage
from bqx_assets.core.merge.join import ROW_GROUPS_KEY, FeatureSource, merge_checkpoints
from bqx_assets.core.storage import open_storage

PAIR = "eurusd"
MINUTE = 60_000_000
START_US = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
ROWS = 2 * 1440  # two UTC days: the newest day is the second, 1,440 rows
SPINE = START_US + np.arange(ROWS, dtype=np.int64) * MINUTE
TARGET = "target_bqx45_h15"
TH = Thresholds(min_rows=1)
# table -> (family, columns); the stem of each output name drops `_eurusd`.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "agg_bqx_eurusd": ("agg", ("agg_mean_45", "agg_std_45")),
    "corr_etf_idx_eurusd_spy": ("corr", ("corr_45",)),
    "tri_agg_bqx_eur_usd_gbp": ("tri", ("tri_mean_45",)),
}

Data = dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]
"""table -> (keys in microseconds, column -> float values with NaN for null)."""


def output_name(table: str, column: str) -> str:
    return f"{table.replace('_' + PAIR, '')}__{column}"


EXPECTATION = Expectation(
    pair=PAIR,
    spine_rows=ROWS,
    columns=(KEY, TARGET, *(output_name(t, c) for t, (_, cs) in TABLES.items() for c in cs)),
    targets=(TARGET,),
    family_of={output_name(t, c): f for t, (f, cs) in TABLES.items() for c in cs},
    table_family={t: f for t, (f, _) in TABLES.items()},
)


def clean_data() -> Data:
    """Production's structural nulls in miniature: agg warms up for 45 minutes, corr has rows
    only while its ETF quotes (08:00-20:00 UTC), tri starts a fifth of the way in."""
    rng = np.random.default_rng(3)
    minute_of_day = (SPINE // MINUTE) % 1440
    agg_mean = rng.normal(0, 1, ROWS)
    agg_mean[:45] = np.nan
    agg_std = np.abs(rng.normal(0, 1, ROWS))
    agg_std[:45] = np.nan
    etf = (minute_of_day >= 8 * 60) & (minute_of_day < 20 * 60)
    late = ROWS // 5
    return {
        "agg_bqx_eurusd": (SPINE, {"agg_mean_45": agg_mean, "agg_std_45": agg_std}),
        "corr_etf_idx_eurusd_spy": (SPINE[etf], {"corr_45": rng.uniform(-1, 1, int(etf.sum()))}),
        "tri_agg_bqx_eur_usd_gbp": (SPINE[late:], {"tri_mean_45": rng.normal(0, 1, ROWS - late)}),
    }


def write_checkpoint(path: Path, keys: np.ndarray, columns: dict[str, np.ndarray]) -> Path:
    arrays = [pa.array(keys, pa.timestamp("us", tz="UTC"))]
    arrays += [pa.array(v, pa.float64(), mask=np.isnan(v)) for v in columns.values()]
    pq.write_table(pa.table(arrays, names=[KEY, *columns]), path, row_group_size=1000)
    return path


def merged(tmp_path: Path, data: Data, name: str = "training_eurusd.parquet") -> Path:
    """The training file the merge writes from `data` (with its coverage record)."""
    folder = tmp_path / name.replace(".parquet", "")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    targets = rng.normal(0, 0.087, ROWS)
    targets[-15:] = np.nan
    spine = write_checkpoint(folder / "targets.parquet", SPINE, {TARGET: targets})
    sources = [
        FeatureSource(
            table=table,
            path=write_checkpoint(folder / f"{table}.parquet", *data[table]),
            columns=tuple((c, output_name(table, c)) for c in TABLES[table][1]),
        )
        for table in TABLES
    ]
    out = tmp_path / name
    merge_checkpoints(spine, [TARGET], sources, out)
    return out


def validate(path: Path, history: Profile | None = None, th: Thresholds = TH) -> ValidationReport:
    return validate_training_file(path, EXPECTATION, th, history)


def build(tmp_path: Path, change: Callable[[Data], None] | None = None) -> ValidationReport:
    data = clean_data()
    if change:
        change(data)
    return validate(merged(tmp_path, data))


# -- the coverage record ---------------------------------------------------------------------
def test_the_merge_records_each_tables_coverage_in_the_footer(tmp_path: Path) -> None:
    path = merged(tmp_path, clean_data())
    metadata = pq.read_metadata(path).metadata
    # Only the coverage record and the row groups' record (what a refresh copies from): the
    # pieces' own metadata (ARROW:schema) stays out.
    assert set(metadata) == {COVERAGE_KEY.encode(), ROW_GROUPS_KEY.encode()}
    coverage = Coverage.from_metadata(metadata)
    assert coverage is not None
    assert (coverage.spine_rows, coverage.newest_rows) == (ROWS, 1440)
    assert coverage.newest_from == START_US + 1440 * MINUTE
    agg, corr, tri = coverage.tables
    assert (agg.table, agg.first_column, agg.columns) == ("agg_bqx_eurusd", 2, 2)
    assert (agg.matched, agg.tail_missing, agg.tail_expected, agg.longest_gap) == (ROWS, 0, 0, 0)
    assert agg.source_nulls == (45, 45) and agg.newest_nulls == (0, 0)
    assert (corr.matched, corr.newest_matched) == (2 * 720, 720)
    assert corr.first_key == START_US + 8 * 60 * MINUTE
    assert corr.last_key == START_US + (1440 + 20 * 60 - 1) * MINUTE
    assert corr.tail_missing == 4 * 60 and corr.longest_gap == 12 * 60
    assert corr.tail_expected == 0  # 20:00-24:00 the day before: the ETF was closed too
    assert corr.newest_nulls == (720,)  # the ETF's closed hours of the newest day
    assert (tri.matched, tri.first_key, tri.first_column) == (ROWS - ROWS // 5, SPINE[576], 5)


def test_a_large_record_is_compressed_and_round_trips() -> None:
    tables = tuple(
        TableCoverage(f"t{i}", i * 25, 25, 9, 8, 1, 2, 3, 0, 0, 4, (1,) * 25, (0,) * 25)
        for i in range(667)
    )
    coverage = Coverage(10, 1, 2, 1, 5, tables)
    encoded = coverage.encode()
    assert encoded.startswith("zstd+base64:") and len(encoded) < 30_000
    assert Coverage.decode(encoded) == coverage


# -- a clean build ---------------------------------------------------------------------------
def test_a_clean_merged_file_passes_every_check_and_splits_merge_and_source_nulls(
    tmp_path: Path,
) -> None:
    report = build(tmp_path)
    assert [o.name for o in report.outcomes] == list(CHECK_NAMES)
    assert report.passed, report.summary()
    families = report.outcome("null_completeness").metadata["families"]
    # corr: half the minutes have no ETF row (merge-made); agg: warm-up nulls (the source's).
    assert families["corr"]["merge_null_share"] == pytest.approx(0.5)
    assert families["corr"]["source_null_share"] == 0.0
    assert families["agg"]["merge_null_share"] == 0.0
    assert families["agg"]["source_null_share"] == pytest.approx(45 / ROWS)
    assert families["tri"]["merge_null_share"] == pytest.approx(0.2, abs=1e-3)
    coverage = report.outcome("table_coverage").metadata
    assert coverage["actual"]["short_tables"] == 0
    assert report.profile is not None and report.profile.family("corr") is not None
    assert "| corr | 1 | 50.00% | 50.00% | 0.00% | 50.00% |" in report.family_table_markdown()
    json.dumps(report.to_dict())


# -- faults in the tables, each caught and named ---------------------------------------------
def test_a_table_cut_at_its_own_limit_fails_table_coverage_naming_it(tmp_path: Path) -> None:
    def cut(data: Data) -> None:  # the first team's ragged tail: LIMIT per table
        keys, cols = data["agg_bqx_eurusd"]
        data["agg_bqx_eurusd"] = (keys[:-100], {c: v[:-100] for c, v in cols.items()})

    report = build(tmp_path, cut)
    outcome = report.outcome("table_coverage")
    assert not outcome.passed and report.failed == ("table_coverage",)
    assert list(outcome.metadata["tables"]) == ["agg_bqx_eurusd"]
    assert outcome.metadata["tables"]["agg_bqx_eurusd"]["newest_minutes_missed"] == 100
    assert "agg_bqx_eurusd misses 100 of the 1,440 newest minutes" in outcome.metadata["summary"]
    assert {"actual", "expected", "threshold"} <= set(outcome.metadata)


def test_a_stale_source_fails_table_coverage(tmp_path: Path) -> None:
    def stale(data: Data) -> None:  # the tri feed stopped a day ago
        keys, cols = data["tri_agg_bqx_eur_usd_gbp"]
        keep = keys < START_US + 1440 * MINUTE
        data["tri_agg_bqx_eur_usd_gbp"] = (keys[keep], {c: v[keep] for c, v in cols.items()})

    outcome = build(tmp_path, stale).outcome("table_coverage")
    assert not outcome.passed
    info = outcome.metadata["tables"]["tri_agg_bqx_eur_usd_gbp"]
    assert info["newest_minutes_missed"] == 1440 and "stops 1,440 rows" in info["why"]


def test_keys_in_the_wrong_unit_fail_table_coverage_and_null_completeness(
    tmp_path: Path,
) -> None:
    def unit_bug(data: Data) -> None:  # microseconds read as nanoseconds: 1970 keys
        keys, cols = data["corr_etf_idx_eurusd_spy"]
        data["corr_etf_idx_eurusd_spy"] = (keys // 1000, cols)

    report = build(tmp_path, unit_bug)
    assert set(report.failed) == {"null_completeness", "table_coverage"}
    info = report.outcome("table_coverage").metadata["tables"]["corr_etf_idx_eurusd_spy"]
    assert info["coverage"] == 0.0 and "covers 0.0% of the spine < 10%" in info["why"]
    nulls = report.outcome("null_completeness").metadata
    assert nulls["all_null_columns"] == ["corr_etf_idx_spy__corr_45"]
    assert nulls["families"]["corr"]["merge_null_share"] == 1.0


def test_null_values_in_the_newest_day_fail_newest_rows(tmp_path: Path) -> None:
    def tail_nulls(data: Data) -> None:  # rows are there, values are not
        _, cols = data["agg_bqx_eurusd"]
        for values in cols.values():
            values[-1000:] = np.nan

    report = build(tmp_path, tail_nulls)
    outcome = report.outcome("newest_rows")
    assert not outcome.passed and "table_coverage" not in report.failed
    assert outcome.metadata["families_over"]["agg"]["newest"] == pytest.approx(1000 / 1440)
    assert outcome.metadata["tables"][0].startswith("agg_bqx_eurusd ")
    assert "agg 69.4% vs" in outcome.metadata["summary"]


def test_a_family_over_its_expected_share_fails_a_first_build(tmp_path: Path) -> None:
    def late(data: Data) -> None:  # tri starts at 60% of the spine: 60% null, expected 24%
        keys, cols = data["tri_agg_bqx_eur_usd_gbp"]
        cut = int(ROWS * 0.6) - ROWS // 5
        data["tri_agg_bqx_eur_usd_gbp"] = (keys[cut:], {c: v[cut:] for c, v in cols.items()})

    report = build(tmp_path, late)
    nulls = report.outcome("null_completeness")
    assert not nulls.passed
    assert nulls.metadata["families_over_threshold"] == {"tri": pytest.approx(0.6)}
    assert "tri 60.0% > 24.0% + 15%" in nulls.metadata["summary"]


# -- drift against the last published profile ------------------------------------------------
@pytest.fixture
def history(tmp_path: Path) -> Profile:
    report = build(tmp_path / "published")
    assert report.passed and report.profile is not None
    return Profile.from_bytes(report.profile.to_bytes(), "history")


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


def test_drift_names_a_column_that_became_all_null(tmp_path: Path, history: Profile) -> None:
    data = clean_data()
    data["corr_etf_idx_eurusd_spy"][1]["corr_45"][:] = np.nan
    report = validate(merged(tmp_path, data), history)
    meta = report.outcome("profile_drift").metadata
    assert meta["became_all_null"] == ["corr_etf_idx_spy__corr_45"]
    assert "null_completeness" in report.failed


# -- the profile's storage -------------------------------------------------------------------
def test_profile_round_trips_through_a_storage_root(tmp_path: Path, history: Profile) -> None:
    storage = open_storage(str(tmp_path / "output"))
    assert load_profile(storage, PAIR) is None  # a pair's first build
    uri = save_profile(storage, history, tmp_path / "work")
    assert uri.endswith(profile_key(PAIR))
    back = load_profile(storage, PAIR)
    assert back is not None and back.columns.equals(history.columns)
    assert back.families == history.families and back.coverage == history.coverage
    assert back.columns.num_rows == 4


def test_a_corrupt_profile_raises_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"somewhere\.profile\.parquet: not a training-file"):
        Profile.from_bytes(b"PAR1 not really", "somewhere.profile.parquet")


def test_command_judges_drift_against_a_profile_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = merged(tmp_path, clean_data(), "first.parquet")
    catalog = _catalog_file(tmp_path)
    base = ["--pair", PAIR, "--catalog", str(catalog), "--spine-rows", str(ROWS)]
    profile = tmp_path / "profile.parquet"
    assert cli.main(["validate", str(first), *base, "--min-rows", "1", "--profile-out",
                     str(profile)]) == 0  # fmt: skip
    capsys.readouterr()
    data = clean_data()
    data["tri_agg_bqx_eur_usd_gbp"][1]["tri_mean_45"][:] *= 1000
    second = merged(tmp_path, data, "second.parquet")
    argv = ["validate", str(second), *base, "--min-rows", "1", "--profile-history", str(profile)]
    assert cli.main(argv) == 1
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["failed"] == ["profile_drift"]
    assert cli.main([*argv[:-1], str(tmp_path / "missing.parquet")]) == 1
    assert "cannot read the profile" in capsys.readouterr().err


def _catalog_file(tmp_path: Path) -> Path:
    from bqx_assets.core.catalog import Catalog, Column, Table, TargetsTable

    tables = [
        Table(name, "features", family, "pair", (PAIR,), tuple(Column(c, "FLOAT64") for c in cs))
        for name, (family, cs) in TABLES.items()
    ]
    targets = TargetsTable("targets_eurusd", "analytics", PAIR, (Column(TARGET, "FLOAT64"),))
    catalog = Catalog(
        "bqx-ml", "features", "analytics", (PAIR,), {t.name: t for t in tables}, {PAIR: targets}
    )
    return catalog.dump(tmp_path / "catalog.json")
