"""Automation, off by default: Declarative Automation rebuilds from changed warehouse tables; a
sensor alerts when a gate check fails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.defs.assets import TRAINING_FILE

refresh_sensor = dg.AutomationConditionSensorDefinition(
    "warehouse_refresh_sensor",
    target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Evaluates the assets' automation conditions (defs/assets.py: OBSERVE_WAREHOUSE, "
        "REBUILD): observes the warehouse families every 6 hours, re-extracts the checkpoints "
        "of families whose tables changed, and rebuilds the training files of the pairs they "
        "feed (all built pairs after a shared family changes)."
    ),
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
    """Failed gate-check evaluations of the training file newer than record `after_id`, oldest
    first, and the largest record id seen (the next cursor). Read per check from the check
    execution records, which every event log (run-sharded SQLite included) serves by id."""
    found = []
    newest = after_id
    for name in CHECK_NAMES:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(TRAINING_FILE, name), limit=limit
        )
        for record in history:
            if record.id <= after_id:
                continue
            newest = max(newest, record.id)
            evaluation = record.event.asset_check_evaluation if record.event else None
            if evaluation is None or evaluation.passed:
                continue
            found.append(
                (
                    record.id,
                    GateFailure(record.partition, name, record.run_id, evaluation.description),
                )
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


automation: list[dg.SensorDefinition] = [refresh_sensor, gate_failure_sensor]
