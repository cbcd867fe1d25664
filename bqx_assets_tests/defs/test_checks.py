"""Gate checks in Dagster: one recorded result per check and pair, and a failure blocks."""

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from bqx_assets.core.gate.report import Expectation
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.gate.validate import CHECK_NAMES, validate_training_file
from bqx_assets.core.layout import KEY
from bqx_assets.defs.checks import (
    check_results,
    metadata_value,
    report_metadata,
    training_check_specs,
)

GOOD, BAD = "eurusd", "gbpusd"
ROWS = 120
TARGETS = tuple(f"target_bqx45_h{h}" for h in (15, 30))
FEATURES = {"agg_bqx__agg_mean_45": "agg", "corr_etf_idx_spy__corr_45": "corr"}
TRAINING = dg.AssetKey("training_file")
PARTITIONS = dg.StaticPartitionsDefinition([GOOD, BAD])
THRESHOLDS = Thresholds(min_rows=100, max_rows=1_000, require_coverage=False)
"""Hand-made files carry no merge coverage record (test_profile.py covers those that do)."""


def expectation(pair: str) -> Expectation:
    return Expectation(pair, ROWS, (KEY, *TARGETS, *FEATURES), TARGETS, FEATURES)


def write_training_file(path: Path, *, broken: bool) -> Path:
    """A passing file, or one with the first team's faults: the corr family 100% null, 1970
    keys, and a missing horizon column."""
    rng = np.random.default_rng(0)
    start = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1_000_000)
    keys = start + np.arange(ROWS, dtype=np.int64) * 60_000_000
    cols = {KEY: pa.array(keys // 1000 if broken else keys, pa.timestamp("us", tz="UTC"))}
    cols |= {t: pa.array(rng.normal(0, 0.087, ROWS)) for t in TARGETS}
    cols |= {f: pa.array(rng.normal(0, 1, ROWS)) for f in FEATURES}
    if broken:
        del cols["target_bqx45_h30"]
        cols["corr_etf_idx_spy__corr_45"] = pa.nulls(ROWS, pa.float64())
    pq.write_table(pa.table(cols), path, row_group_size=50)
    return path


def gated_assets(root: Path) -> list[dg.AssetsDefinition]:
    """A training file asset that validates, then publishes or quarantines, as the real one
    does; and a downstream asset that must not run after a failed gate."""

    @dg.asset(
        key=TRAINING,
        partitions_def=PARTITIONS,
        check_specs=training_check_specs(TRAINING, PARTITIONS),
    )
    def training_file(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        pair = context.partition_key
        work = root / "work" / f"training_{pair}.parquet"
        work.parent.mkdir(parents=True, exist_ok=True)
        write_training_file(work, broken=pair == BAD and not (root / "fixed").exists())
        report = validate_training_file(work, expectation(pair), THRESHOLDS)
        target = root / ("published" if report.passed else "quarantine") / work.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(work, target)
        if report.passed:
            (root / "quarantine" / work.name).unlink(missing_ok=True)
        return dg.MaterializeResult(
            metadata=report_metadata(report), check_results=check_results(report, TRAINING)
        )

    @dg.asset(partitions_def=PARTITIONS, deps=[training_file])
    def model_input(context: dg.AssetExecutionContext) -> None:
        (root / "downstream").mkdir(exist_ok=True)
        (root / "downstream" / context.partition_key).touch()

    return [training_file, model_input]  # type: ignore[list-item]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[dg.DagsterInstance, Path]:
    root = tmp_path_factory.mktemp("gate")
    instance = dg.DagsterInstance.ephemeral()
    assets = gated_assets(root)
    for pair in (GOOD, BAD):
        result = dg.materialize(assets, instance=instance, partition_key=pair, raise_on_error=False)
        assert result.success is (pair == GOOD)
    return instance, root


def test_specs_are_blocking_partitioned_and_described() -> None:
    specs = training_check_specs(TRAINING, PARTITIONS)
    assert [s.name for s in specs] == list(CHECK_NAMES)
    assert all(s.blocking and s.partitions_def == PARTITIONS and s.description for s in specs)


def test_each_pair_records_its_own_result_per_check(
    materialized: tuple[dg.DagsterInstance, Path],
) -> None:
    instance, _ = materialized
    keys = [dg.AssetCheckKey(TRAINING, name) for name in CHECK_NAMES]
    storage = instance.event_log_storage
    by_pair = {
        pair: storage.get_latest_asset_check_execution_by_key(
            keys, partition_filter=PartitionKeyFilter(key=pair)
        )
        for pair in (GOOD, BAD)
    }
    passed, failed = (
        AssetCheckExecutionRecordStatus.SUCCEEDED,
        AssetCheckExecutionRecordStatus.FAILED,
    )
    assert {k.name: r.status for k, r in by_pair[GOOD].items()} == dict.fromkeys(
        CHECK_NAMES, passed
    )
    assert {k.name: r.status for k, r in by_pair[BAD].items()} == {
        "row_count": passed,
        "column_count": failed,
        "target_horizons": failed,
        "null_completeness": failed,
        "key_integrity": failed,
        "no_target_leakage": passed,
        # Hand-made files: no coverage record (not required here), one row group's tail, and
        # a pair's first build (no published profile).
        "table_coverage": passed,
        "newest_rows": passed,
        "profile_drift": passed,
    }
    assert all(r.partition == GOOD for r in by_pair[GOOD].values())
    # The UI's view: the latest result of each check is known per partition, not only overall.
    infos = storage.get_asset_check_partition_info(keys)
    assert {(i.check_key.name, i.partition_key): i.latest_execution_status for i in infos} == {
        **{(k.name, GOOD): passed for k in keys},
        **{(k.name, BAD): r.status for k, r in by_pair[BAD].items()},
    }


def test_failed_results_carry_actual_expected_threshold_and_offenders(
    materialized: tuple[dg.DagsterInstance, Path],
) -> None:
    instance, _ = materialized
    key = dg.AssetCheckKey(TRAINING, "null_completeness")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key], partition_filter=PartitionKeyFilter(key=BAD)
    )[key]
    evaluation = record.evaluation
    assert evaluation is not None and not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    metadata = evaluation.metadata
    # The numbers the UI plots across runs: the worst family's excess over its allowed share
    # (corr: 100% null, 83% allowed) against 0.
    assert isinstance(metadata["actual"], dg.FloatMetadataValue)
    assert metadata["actual"].value == pytest.approx(0.17)
    assert metadata["threshold"] == dg.MetadataValue.float(0.0)
    assert metadata["families_over"] == dg.MetadataValue.int(1)
    # Offenders and families as markdown tables, never JSON.
    assert not any(isinstance(v, dg.JsonMetadataValue) for v in metadata.values())
    assert metadata["all_null"] == dg.MetadataValue.md(
        "| column | family |\n|---|---|\n| corr_etf_idx_spy__corr_45 | corr |"
    )
    families = metadata["families"]
    assert isinstance(families, dg.MarkdownMetadataValue)
    assert "| no row for the key (merge-made) | null in the source's rows |" in families.value
    assert "| corr | 1 | 100.00% | 0.00% | 100.00% | - | 1 | 83.0% (53.0% + 30 points) | NO |" in (
        families.value
    )
    # The result's description is the summary, with the thresholds it applied.
    assert "corr 100.0% > 83.0% (53.0% + 30 points)" in (evaluation.description or "")
    assert "100% null" in (evaluation.description or "")


def test_every_check_result_has_a_float_actual_and_threshold_and_no_json(
    materialized: tuple[dg.DagsterInstance, Path],
) -> None:
    instance, _ = materialized
    keys = [dg.AssetCheckKey(TRAINING, name) for name in CHECK_NAMES]
    for pair in (GOOD, BAD):
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            keys, partition_filter=PartitionKeyFilter(key=pair)
        )
        for key, record in latest.items():
            assert record.evaluation is not None
            metadata = record.evaluation.metadata
            assert isinstance(metadata["actual"], dg.FloatMetadataValue), (pair, key.name)
            assert isinstance(metadata["threshold"], dg.FloatMetadataValue), (pair, key.name)
            assert not any(isinstance(v, dg.JsonMetadataValue) for v in metadata.values())


def test_metadata_values_render_as_numbers_text_and_markdown() -> None:
    assert metadata_value("actual", 0.5) == dg.MetadataValue.float(0.5)
    assert metadata_value("rows", 3) == dg.MetadataValue.int(3)
    assert metadata_value("in_catalog_order", False) == dg.MetadataValue.bool(False)
    assert metadata_value("first_key", None) == dg.MetadataValue.text("-")
    assert metadata_value("missing", []) == dg.MetadataValue.text("none")
    assert metadata_value("missing", ["a", "b"]) == dg.MetadataValue.md(
        "| missing |\n|---|\n| a |\n| b |"
    )
    with pytest.raises(TypeError, match=r"check metadata 'odd': no rendering for dict"):
        metadata_value("odd", {"a": 1})  # type: ignore[arg-type]


def test_a_failed_gate_publishes_nothing_and_blocks_downstream(
    materialized: tuple[dg.DagsterInstance, Path],
) -> None:
    instance, root = materialized
    assert sorted(p.name for p in (root / "published").iterdir()) == [f"training_{GOOD}.parquet"]
    assert sorted(p.name for p in (root / "quarantine").iterdir()) == [f"training_{BAD}.parquet"]
    assert sorted(p.name for p in (root / "downstream").iterdir()) == [GOOD]
    materialized_partitions = instance.get_materialized_partitions(dg.AssetKey("model_input"))
    assert materialized_partitions == {GOOD}
    event = instance.get_latest_materialization_event(TRAINING)
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.partition == BAD
    families = event.asset_materialization.metadata["families"].value
    assert "| corr | 1 | 100.00% | 0.00% | 100.00% | - | 1 | 83.0% (53.0% + 30 points) | NO |" in (
        families
    )


def test_rematerializing_after_the_fix_passes_and_publishes(
    materialized: tuple[dg.DagsterInstance, Path],
) -> None:
    # Runs last: it changes the shared instance. The data of the failed pair is fixed upstream.
    instance, root = materialized
    (root / "fixed").touch()
    result = dg.materialize(gated_assets(root), instance=instance, partition_key=BAD)
    assert result.success
    keys = [dg.AssetCheckKey(TRAINING, name) for name in CHECK_NAMES]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        keys, partition_filter=PartitionKeyFilter(key=BAD)
    )
    assert {r.status for r in latest.values()} == {AssetCheckExecutionRecordStatus.SUCCEEDED}
    assert sorted(p.name for p in (root / "published").iterdir()) == [
        f"training_{GOOD}.parquet",
        f"training_{BAD}.parquet",
    ]
    assert not any((root / "quarantine").iterdir())
    assert instance.get_materialized_partitions(dg.AssetKey("model_input")) == {GOOD, BAD}
