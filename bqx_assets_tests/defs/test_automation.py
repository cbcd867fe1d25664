"""Automation: Declarative Automation rebuilds what changed warehouse tables feed; the sensors
load with the definitions, with no beta or preview warning. Alerts: test_alerts.py."""

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from bqx_assets.core.catalog import Catalog, SchemaRow
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse import (
    Cut,
    DateRange,
    PartitionState,
    PartitionStates,
    SourceState,
    TableRead,
    Warehouse,
)
from bqx_assets.defs import automation as auto
from bqx_assets.defs.assets import (
    PAIR_FAMILIES,
    SHARED_FAMILIES,
    TARGETS,
    TRAINING_FILE,
    all_assets,
    checkpoint_asset_key,
    pair_sources,
    shared_sources,
    warehouse_key,
)
from bqx_assets.defs.environment import resources_for
from bqx_assets.defs.overview import GATE_SUMMARY
from bqx_assets.defs.partitions import pairs_partitions
from bqx_assets.defs.previews import allowed_previews
from bqx_assets.defs.resources import PipelineSettings, WarehouseResource

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 5, 0)
"""An hour before a 6-hourly observation tick (06:00 UTC)."""
STAGES = {"warehouse", "checkpoints", *TRAINING_FILE.path}
DAY = date(2025, 12, 31)
"""The one day partition every table of the state warehouse has."""


class _StateWarehouse(Warehouse):
    """Answers only `state()` and `partition_states()` (one day a table), from a dict of
    `dataset.table` -> last modified."""

    name = "states"

    def __init__(self, states: dict[str, str]) -> None:
        self._states = states

    def information_schema(self) -> list[SchemaRow]:
        return []

    def state(self, dataset: str, table: str) -> SourceState:
        modified = self._states.get(f"{dataset}.{table}")
        if modified is None:
            raise WarehouseError(f"table {dataset}.{table} does not exist")
        return SourceState(dataset, table, 100, modified, 1000)

    def partition_states(
        self, dataset: str, tables: Sequence[str], *, cut: Cut | None = None
    ) -> PartitionStates:
        return PartitionStates({
            table: (PartitionState(DAY, 100, self._states[f"{dataset}.{table}"]),)
            for table in tables
            if f"{dataset}.{table}" in self._states
        })  # fmt: skip

    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
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
    # In memory: the runs and evaluations here write hundreds of events, each a SQLite commit
    # (seconds in all) on a persistent test instance.
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def _catalog() -> Catalog:
    return PipelineSettings().catalog()


def _states(pairs: Sequence[str], modified: str = "2026-01-01T00:00:00+00:00") -> dict[str, str]:
    """Every table of `pairs` (their own, their targets, the shared ones) last modified then."""
    catalog = _catalog()
    out = {}
    for pair in pairs:
        for table in catalog.tables_for(pair):
            out[f"{table.dataset}.{table.name}"] = modified
        out[f"{catalog.targets_dataset}.{catalog.targets[pair].name}"] = modified
    return out


class Graph:
    """The real assets with a warehouse that answers table states, observed by jobs."""

    def __init__(self, instance: dg.DagsterInstance, states: dict[str, str]) -> None:
        self.instance = instance
        self.states = states
        self.cursor: Any = None

    def defs(self) -> dg.Definitions:
        resources = {
            **resources_for("local"),
            "warehouse": StateWarehouseResource(states=dict(self.states)),
        }
        return dg.Definitions(
            assets=all_assets,
            jobs=[
                dg.define_asset_job("observe_pair", dg.AssetSelection.assets(pair_sources)),
                dg.define_asset_job("observe_shared", dg.AssetSelection.assets(shared_sources)),
            ],
            resources=resources,
        )

    def observe(self, pairs: Sequence[str]) -> None:
        defs = self.defs()
        for pair in pairs:
            result = defs.resolve_job_def("observe_pair").execute_in_process(
                instance=self.instance, partition_key=pair
            )
            assert result.success
        assert (
            defs.resolve_job_def("observe_shared")
            .execute_in_process(instance=self.instance)
            .success
        )

    def evaluate(self, at: datetime) -> dict[str, set[str | None]]:
        """Asset (user string) -> partitions the automation requests at `at`."""
        result = dg.evaluate_automation_conditions(
            defs=self.defs(), instance=self.instance, cursor=self.cursor, evaluation_time=at
        )
        self.cursor = result.cursor
        requested: dict[str, set[str | None]] = {}
        for entry in result.results:
            # Only the stages here; assets downstream of the training file have their own tests.
            if entry.true_subset.size and entry.key.path[0] in STAGES:
                keys = (
                    entry.true_subset.expensively_compute_partition_keys()
                    if entry.true_subset.is_partitioned
                    else {None}
                )
                requested[entry.key.to_user_string()] = set(keys)
        return requested


def _checkpoints(families: Sequence[str]) -> set[str]:
    return {checkpoint_asset_key(f).to_user_string() for f in families}


def test_the_refresh_sensor_is_off_by_default_the_view_and_alert_sensors_on() -> None:
    """The refresh sensor launches runs (it costs warehouse reads): off until turned on. The
    view sensor reads only gate reports: on, so the gate view follows every pair's build. The
    alert sensor launches nothing and only logs until a webhook is set: on, so that setting
    BQX_ALERT_WEBHOOK is all it takes for alerts to arrive."""
    status = {s.name: s.default_status for s in auto.automation}
    assert status == {
        "warehouse_refresh_sensor": dg.DefaultSensorStatus.STOPPED,
        "gate_summary_sensor": dg.DefaultSensorStatus.RUNNING,
        "failure_alert_sensor": dg.DefaultSensorStatus.RUNNING,
    }


def test_warehouse_families_are_observed_every_six_hours(instance: dg.DagsterInstance) -> None:
    graph = Graph(instance, _states(["eurusd"]))
    assert graph.evaluate(T0) == {}
    ticked = graph.evaluate(T0 + timedelta(hours=1, minutes=1))
    sources = {warehouse_key(f).to_user_string() for f in (*PAIR_FAMILIES, TARGETS)}
    assert set(ticked) == sources | {warehouse_key(f).to_user_string() for f in SHARED_FAMILIES}
    assert ticked["warehouse/agg"] == set(pairs_partitions.get_partition_keys())
    assert graph.evaluate(T0 + timedelta(hours=1, minutes=2)) == {}


def test_a_changed_family_rebuilds_only_its_checkpoints_and_the_pair(
    instance: dg.DagsterInstance,
) -> None:
    graph = Graph(instance, _states(["eurusd", "gbpusd"]))
    graph.evaluate(T0)
    graph.observe(["eurusd", "gbpusd"])
    # A source's first observation counts as a change: every checkpoint is requested (and reused
    # by extraction where its table did not change), the pairs' once the shared ones, whose cut
    # they read as of, are extracted, each in one run with the pair's training file.
    first = graph.evaluate(T0 + timedelta(minutes=1))
    assert first == {key: {None} for key in _checkpoints(SHARED_FAMILIES)}
    assert graph.evaluate(T0 + timedelta(minutes=1, seconds=30)) == {}  # still extracting
    for key in first:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(dg.AssetKey.from_user_string(key))
        )
    built = graph.evaluate(T0 + timedelta(minutes=2))
    pair_keys = [*_checkpoints((*PAIR_FAMILIES, TARGETS)), TRAINING_FILE.to_user_string()]
    assert built == {key: {"eurusd", "gbpusd"} for key in pair_keys}
    for key in built:
        for pair in built[key]:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(dg.AssetKey.from_user_string(key), partition=pair)
            )

    graph.observe(["eurusd", "gbpusd"])  # nothing changed in the warehouse
    assert graph.evaluate(T0 + timedelta(minutes=3)) == {}

    agg = next(t for t in _catalog().tables_for("gbpusd") if t.family == "agg")
    graph.states[f"{agg.dataset}.{agg.name}"] = "2026-01-02T00:00:00+00:00"
    graph.observe(["eurusd", "gbpusd"])
    changed = graph.evaluate(T0 + timedelta(minutes=4))
    assert changed == {"checkpoints/agg": {"gbpusd"}, TRAINING_FILE.to_user_string(): {"gbpusd"}}


def test_re_extracted_shared_checkpoints_rebuild_every_built_pair(
    instance: dg.DagsterInstance,
) -> None:
    graph = Graph(instance, _states(["eurusd"]))
    graph.evaluate(T0)
    for family in (*PAIR_FAMILIES, TARGETS):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(checkpoint_asset_key(family), partition="eurusd")
        )
    for family in SHARED_FAMILIES:
        instance.report_runless_asset_event(dg.AssetMaterialization(checkpoint_asset_key(family)))
    assert graph.evaluate(T0 + timedelta(minutes=1)) == {TRAINING_FILE.to_user_string(): {"eurusd"}}
    instance.report_runless_asset_event(dg.AssetMaterialization(TRAINING_FILE, partition="eurusd"))
    assert graph.evaluate(T0 + timedelta(minutes=2)) == {}

    instance.report_runless_asset_event(dg.AssetMaterialization(checkpoint_asset_key("tri")))
    after = graph.evaluate(T0 + timedelta(minutes=3))
    # gbpusd has no checkpoints: it stays unbuilt until a backfill builds it.
    assert after == {TRAINING_FILE.to_user_string(): {"eurusd"}}


def test_a_day_appended_everywhere_refreshes_the_shared_checkpoints_then_each_pair(
    instance: dg.DagsterInstance,
) -> None:
    """Upstream appends to every table (shared and the pairs'): the pair checkpoints wait for
    the shared ones, whose cut they read as of, then run once with the training file; a pair
    checkpoint run beside the shared refresh would read as of the old cut and stay behind."""
    graph = Graph(instance, _states(["eurusd", "gbpusd"]))
    graph.evaluate(T0)
    graph.observe(["eurusd", "gbpusd"])
    for family in SHARED_FAMILIES:
        instance.report_runless_asset_event(dg.AssetMaterialization(checkpoint_asset_key(family)))
    for pair in ("eurusd", "gbpusd"):
        for family in (*PAIR_FAMILIES, TARGETS):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(checkpoint_asset_key(family), partition=pair)
            )
        instance.report_runless_asset_event(dg.AssetMaterialization(TRAINING_FILE, partition=pair))
    graph.evaluate(T0 + timedelta(minutes=1))
    graph.observe(["eurusd", "gbpusd"])
    assert graph.evaluate(T0 + timedelta(minutes=2)) == {}

    graph.states = dict.fromkeys(graph.states, "2026-01-02T00:00:00+00:00")
    graph.observe(["eurusd", "gbpusd"])
    first = graph.evaluate(T0 + timedelta(minutes=3))
    assert first == {key: {None} for key in _checkpoints(SHARED_FAMILIES)}
    for family in SHARED_FAMILIES:
        instance.report_runless_asset_event(dg.AssetMaterialization(checkpoint_asset_key(family)))
    then = graph.evaluate(T0 + timedelta(minutes=4))
    both = {"eurusd", "gbpusd"}
    assert then == dict.fromkeys(
        [*_checkpoints((*PAIR_FAMILIES, TARGETS)), TRAINING_FILE.to_user_string()], both
    )


def test_sensors_load_with_the_definitions() -> None:
    """The automation sensor targets the real graph, sources included."""
    from bqx_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {s.name for s in repository.sensor_defs} == {s.name for s in auto.automation}
    graph = defs.resolve_asset_graph()
    assert all(graph.get(k).automation_condition is not None for k in graph.get_all_asset_keys())


def test_the_refresh_sensor_targets_every_asset_and_the_warehouse_sources() -> None:
    from bqx_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    targeted = auto.refresh_sensor.asset_selection.resolve(graph)
    # Every asset but the gate view, which has its own sensor (an asset has at most one).
    assert targeted == set(graph.get_all_asset_keys()) - {GATE_SUMMARY}
    assert auto.view_sensor.asset_selection.resolve(graph) == {GATE_SUMMARY}
    sources = {warehouse_key(f) for f in (*PAIR_FAMILIES, TARGETS, *SHARED_FAMILIES)}
    assert sources <= targeted
    # The stable selection without the sources leaves them out: the union is what adds them.
    assert not sources & dg.AssetSelection.all().resolve(graph)


_LOAD = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dagster as dg
    from bqx_assets.definitions import defs
    dg.Definitions.validate_loadable(defs)
    defs.get_repository_def().get_all_jobs()
print(json.dumps([[w.category.__name__, str(w.message)] for w in caught]))
"""


def test_loading_the_definitions_warns_of_no_beta_or_preview_api() -> None:
    """In a fresh interpreter (the definitions' modules are imported once per process): every
    warning is recorded, none is a Dagster beta, preview, supersession or deprecation warning.
    The ones bqx_assets accepts are silenced in one place (defs/previews.py), with why."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BQX_", "DAGSTER_HOME"))}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    caught = json.loads(done.stdout.strip().splitlines()[-1])
    flagged = {"BetaWarning", "PreviewWarning", "SupersessionWarning", "DeprecationWarning"}
    assert [w for w in caught if w[0] in flagged] == []


def test_the_silenced_warnings_are_the_allowed_ones_only() -> None:
    """`allowed_previews` silences exactly `ALLOWED`: another beta warning still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with allowed_previews():
            dg.AssetCheckSpec("c", asset="a", partitions_def=dg.StaticPartitionsDefinition(["x"]))
            dg.AssetSelection.all(include_sources=True)
    assert [type(w.message).__name__ for w in caught] == ["BetaWarning"]
    assert "include_sources" in str(caught[0].message)
