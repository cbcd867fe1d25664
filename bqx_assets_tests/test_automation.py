"""Sensors: source-change refreshes of pairs and shared checkpoints, and gate-failure alerts."""

import json
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from bqx_assets.core.catalog import SchemaRow
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse import DateRange, SourceState, TableRead, Warehouse
from bqx_assets.defs import automation as auto
from bqx_assets.defs.checks import training_check_specs
from bqx_assets.defs.partitions import pairs_partitions
from bqx_assets.defs.resources import PipelineSettings, WarehouseResource


class _StateWarehouse(Warehouse):
    """Answers only `state()`, from a dict of `dataset.table` -> last modified."""

    name = "states"

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states

    def information_schema(self) -> list[SchemaRow]:
        return []

    def state(self, dataset: str, table: str) -> SourceState:
        modified = self.states.get(f"{dataset}.{table}")
        if modified is None:
            raise WarehouseError(f"table {dataset}.{table} does not exist")
        return SourceState(dataset, table, 100, modified, 1000)

    def read(
        self, dataset: str, table: str, columns: Sequence[str], window: DateRange
    ) -> TableRead:
        return TableRead(pa.table({}), 0)


class StateWarehouseResource(WarehouseResource):
    states: dict[str, str]

    def open(self) -> Warehouse:
        return _StateWarehouse(dict(self.states))

    def describe(self) -> str:
        return "states"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def _states(pairs: Sequence[str], modified: str = "2026-01-01T00:00:00+00:00") -> dict[str, str]:
    catalog = PipelineSettings().catalog()
    out = {}
    for pair in pairs:
        for dataset, table in auto.pair_sentinels(catalog, pair):
            out[f"{dataset}.{table}"] = modified
    for dataset, table in auto.shared_sentinels(catalog):
        out[f"{dataset}.{table}"] = modified
    return out


def _tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    states: dict[str, str],
    cursor: str | None,
) -> Any:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "warehouse": StateWarehouseResource(states=states),
            "settings": PipelineSettings(),
        },
    )
    return sensor(context)


def test_sensors_are_off_by_default() -> None:
    for sensor in auto.automation:
        assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_pair_sensor_records_then_requests_only_changed_pairs(
    instance: dg.DagsterInstance,
) -> None:
    states = _states(["eurusd", "gbpusd", "usdjpy"])
    first = _tick(auto.pair_sources_sensor, instance, states, None)
    assert first.run_requests == []
    assert sorted(json.loads(first.cursor)) == ["eurusd", "gbpusd", "usdjpy"]

    same = _tick(auto.pair_sources_sensor, instance, states, first.cursor)
    assert same.run_requests == []

    catalog = PipelineSettings().catalog()
    dataset, table = auto.pair_sentinels(catalog, "gbpusd")[0]
    states[f"{dataset}.{table}"] = "2026-01-02T00:00:00+00:00"
    changed = _tick(auto.pair_sources_sensor, instance, states, same.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["gbpusd"]
    # The same change seen again yields the same run key, so the daemon launches it once.
    again = _tick(auto.pair_sources_sensor, instance, states, same.cursor)
    assert again.run_requests[0].run_key == changed.run_requests[0].run_key


def test_pair_sensor_requests_every_pair_after_shared_checkpoints_change(
    instance: dg.DagsterInstance,
) -> None:
    states = _states(["eurusd", "usdjpy"])
    first = _tick(auto.pair_sources_sensor, instance, states, None)
    instance.report_runless_asset_event(dg.AssetMaterialization(auto.SHARED_CHECKPOINT))
    after = _tick(auto.pair_sources_sensor, instance, states, first.cursor)
    assert sorted(r.partition_key for r in after.run_requests) == ["eurusd", "usdjpy"]


def test_shared_sensor_requests_a_run_when_a_shared_family_changes(
    instance: dg.DagsterInstance,
) -> None:
    states = _states(["eurusd"])
    first = _tick(auto.shared_sources_sensor, instance, states, None)
    assert first.run_requests == []
    catalog = PipelineSettings().catalog()
    dataset, table = auto.shared_sentinels(catalog)[2]
    states[f"{dataset}.{table}"] = "2026-02-01T00:00:00+00:00"
    changed = _tick(auto.shared_sources_sensor, instance, states, first.cursor)
    assert len(changed.run_requests) == 1
    assert changed.run_requests[0].run_key.startswith("shared:")


def _record_gate(instance: dg.DagsterInstance, failing: dict[str, list[str]]) -> None:
    """Materialize a stand-in training file per pair whose gate checks fail as given."""
    specs = training_check_specs(auto.TRAINING_FILE, pairs_partitions)

    @dg.asset(key=auto.TRAINING_FILE, partitions_def=pairs_partitions, check_specs=specs)
    def training_file(
        context: dg.AssetExecutionContext,
    ) -> Iterator[dg.Output[None] | dg.AssetCheckResult]:
        yield dg.Output(None)
        for spec in specs:
            yield dg.AssetCheckResult(
                check_name=spec.name,
                passed=spec.name not in failing.get(context.partition_key, []),
                severity=dg.AssetCheckSeverity.ERROR,
            )

    for pair in failing:
        dg.materialize(
            [training_file],
            instance=instance,
            partition_key=pair,
            raise_on_error=False,
            resources={"io_manager": dg.mem_io_manager},
        )


def test_gate_failure_sensor_alerts_once_per_failed_check(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    alerts: list[auto.GateFailure] = []
    monkeypatch.setattr(auto, "alert_hooks", [alerts.append])
    _record_gate(instance, {"eurusd": [], "gbpusd": ["row_count", "no_target_leakage"]})

    first = auto.gate_failure_sensor(dg.build_sensor_context(instance=instance))
    assert sorted((a.pair, a.check_name) for a in alerts) == [
        ("gbpusd", "no_target_leakage"),
        ("gbpusd", "row_count"),
    ]
    assert "gbpusd" in first.skip_reason.skip_message

    again = auto.gate_failure_sensor(
        dg.build_sensor_context(instance=instance, cursor=first.cursor)
    )
    assert len(alerts) == 2 and "no new failures" in again.skip_reason.skip_message

    _record_gate(instance, {"usdjpy": ["null_completeness"]})
    auto.gate_failure_sensor(dg.build_sensor_context(instance=instance, cursor=again.cursor))
    assert [(a.pair, a.check_name) for a in alerts[2:]] == [("usdjpy", "null_completeness")]


def test_sensors_load_with_the_definitions() -> None:
    """The sensors' jobs and resources resolve against the real graph."""
    from bqx_assets.definitions import defs

    with_sensors = dg.Definitions.merge(defs, dg.Definitions(sensors=auto.automation))
    dg.Definitions.validate_loadable(with_sensors)
    repository = with_sensors.get_repository_def()
    assert {s.name for s in repository.sensor_defs} >= {s.name for s in auto.automation}
    assert repository.get_sensor_def("pair_sources_sensor").job_name == "pair_training_job"
