"""Sensors, off by default: rebuild when warehouse tables change; alert when a gate check fails."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import BqxError
from bqx_assets.core.validation import CHECK_NAMES
from bqx_assets.core.warehouse import Warehouse
from bqx_assets.defs.resources import PipelineSettings, WarehouseResource

TRAINING_FILE = dg.AssetKey("training_file")
SHARED_CHECKPOINT = dg.AssetKey(["checkpoints", "tri"])
"""The shared checkpoints are materialized together; one of them stands for all."""
SHARED_FAMILIES: tuple[str, ...] = ("tri", "mkt", "var", "csi")
SHARED_JOB = "shared_checkpoints_job"
PAIR_JOB = "pair_training_job"
WAREHOUSE_INTERVAL_SECONDS = 6 * 3600
"""The warehouse's feature jobs refresh daily; a 6-hourly poll costs a few dozen metadata calls."""


def _fingerprint(states: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(states).encode()).hexdigest()[:16]


def pair_sentinels(catalog: Catalog, pair: str) -> list[tuple[str, str]]:
    """(dataset, table) whose state stands for the pair's sources: its targets table, which the
    warehouse's feature jobs rewrite last in each refresh. Asking BigQuery for the state of all
    ~250 tables of each of 28 pairs would take longer than a sensor tick may."""
    targets = catalog.targets[pair]
    return [(targets.dataset, targets.name)]


def shared_sentinels(catalog: Catalog) -> list[tuple[str, str]]:
    """The first table of each shared family (tri, mkt, var, csi): each family is refreshed as a
    whole, so one table per family shows when it changed."""
    first: dict[str, tuple[str, str]] = {}
    for table in catalog.shared_tables():
        first.setdefault(table.family, (table.dataset, table.name))
    return [first[f] for f in SHARED_FAMILIES if f in first]


def source_fingerprint(warehouse: Warehouse, tables: Sequence[tuple[str, str]]) -> str | None:
    """A fingerprint of the tables' states (rows, last modified); None if one is missing (a pair
    the warehouse does not hold)."""
    try:
        states = [warehouse.state(dataset, table).version for dataset, table in tables]
    except BqxError:
        return None
    return _fingerprint(states)


def _latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int | None:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else None


def _load_cursor(cursor: str | None) -> dict[str, str] | None:
    return json.loads(cursor) if cursor else None


@dg.sensor(
    name="shared_sources_sensor",
    job_name=SHARED_JOB,
    minimum_interval_seconds=WAREHOUSE_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Re-extracts the shared checkpoints (tri, mkt, var, csi) when the warehouse's shared "
        "tables change. The first evaluation only records the current state."
    ),
)
def shared_sources_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> dg.SensorResult | dg.SkipReason:
    wh = warehouse.open()
    try:
        current = source_fingerprint(wh, shared_sentinels(settings.catalog()))
    finally:
        wh.close()
    if current is None:
        return dg.SkipReason("the warehouse has no shared tables")
    seen = _load_cursor(context.cursor)
    cursor = json.dumps({"shared": current})
    if seen is None or seen.get("shared") == current:
        return dg.SensorResult(skip_reason="shared tables unchanged", cursor=cursor)
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"shared:{current}")], cursor=cursor)


@dg.sensor(
    name="pair_sources_sensor",
    job_name=PAIR_JOB,
    minimum_interval_seconds=WAREHOUSE_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Rebuilds a pair's training file when its sources change in the warehouse or the shared "
        "checkpoints were re-extracted since its last request; one run per changed pair. The first "
        "evaluation only records the current state (initial builds are a backfill)."
    ),
)
def pair_sources_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, settings: PipelineSettings
) -> dg.SensorResult:
    catalog = settings.catalog()
    # A pair waits for the shared checkpoints: it is requested again once they are re-extracted.
    shared = str(_latest_storage_id(context.instance, SHARED_CHECKPOINT))
    current: dict[str, str] = {}
    wh = warehouse.open()
    try:
        for pair in catalog.pairs:
            own = source_fingerprint(wh, pair_sentinels(catalog, pair))
            if own is not None:
                current[pair] = _fingerprint([own, shared])
    finally:
        wh.close()
    seen = _load_cursor(context.cursor)
    cursor = json.dumps(current, sort_keys=True)
    if seen is None:
        return dg.SensorResult(skip_reason=f"recorded {len(current)} pairs", cursor=cursor)
    changed = [p for p, fp in current.items() if seen.get(p) != fp]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{p}:{current[p]}", partition_key=p, tags={"bqx/trigger": "source"}
            )
            for p in changed
        ],
        skip_reason=None if changed else "no pair's sources changed",
        cursor=cursor,
    )


@dataclass(frozen=True)
class GateFailure:
    """A failed gate check of one pair's training file."""

    pair: str | None
    check_name: str
    run_id: str
    description: str | None

    def line(self) -> str:
        text = f" ({self.description})" if self.description else ""
        return f"gate check {self.check_name} failed for {self.pair} in run {self.run_id}{text}"


AlertHook = Callable[[GateFailure], None]
alert_hooks: list[AlertHook] = []
"""Called once per gate failure after it is logged: append a Slack, PagerDuty or e-mail notifier
here (in the code location) to be paged; the sensor stays free of any one vendor."""


def gate_failures(
    instance: dg.DagsterInstance, after_id: int, limit: int = 200
) -> tuple[list[GateFailure], int]:
    """Failed gate-check evaluations of the training file newer than `after_id`, oldest first,
    and the largest id seen (the next cursor)."""
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    found = []
    newest = after_id
    for name in CHECK_NAMES:
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(TRAINING_FILE, name),
            limit=limit,
            status={AssetCheckExecutionRecordStatus.FAILED},
        )
        for record in records:
            if record.id <= after_id:
                continue
            newest = max(newest, record.id)
            evaluation = record.event.asset_check_evaluation if record.event else None
            description = evaluation.description if evaluation else None
            found.append(
                (record.id, GateFailure(record.partition, name, record.run_id, description))
            )
    return [failure for _, failure in sorted(found, key=lambda item: item[0])], newest


@dg.sensor(
    name="gate_failure_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Alerts when a pair's training file fails a gate check: logs each failure at error level "
        "and calls the notifiers in `bqx_assets.defs.automation.alert_hooks`."
    ),
)
def gate_failure_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else 0
    failures, newest = gate_failures(context.instance, after)
    for failure in failures:
        context.log.error(failure.line())
        for hook in alert_hooks:
            hook(failure)
    pairs = sorted({f.pair or "?" for f in failures})
    reason = f"{len(failures)} gate failures: {', '.join(pairs)}" if failures else "no new failures"
    return dg.SensorResult(skip_reason=reason, cursor=str(newest))


automation: list[dg.SensorDefinition] = [
    shared_sources_sensor,
    pair_sources_sensor,
    gate_failure_sensor,
]
