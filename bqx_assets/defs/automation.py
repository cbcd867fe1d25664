"""Automation: Declarative Automation rebuilds from changed warehouse tables (off by default),
brings the gate view up to date after pairs' builds (on), and a failed run or a failed gate
sends one alert (on)."""

from __future__ import annotations

import dagster as dg

from bqx_assets.core.publish import latest_report
from bqx_assets.core.storage import Storage
from bqx_assets.defs.alerts import (
    Alert,
    AlertChannel,
    AlertDeliveryError,
    Problem,
    alert_sent,
    gate_alert,
    one_line,
    record_alert,
    run_alert,
)
from bqx_assets.defs.assets import warehouse_assets
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.overview import GATE_SUMMARY

refresh_sensor = dg.AutomationConditionSensorDefinition(
    "warehouse_refresh_sensor",
    # Every asset and the observable warehouse sources (`AssetSelection.all()` leaves sources
    # out; its `include_sources` flag is a beta parameter).
    target=(dg.AssetSelection.all() | dg.AssetSelection.assets(*warehouse_assets))
    - dg.AssetSelection.assets(GATE_SUMMARY),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Evaluates the assets' automation conditions (defs/assets.py: OBSERVE_WAREHOUSE, "
        "REBUILD): observes the warehouse families every 6 hours, re-extracts the checkpoints "
        "of families whose tables changed, and rebuilds the training files of the pairs they "
        "feed (all built pairs after a shared family changes)."
    ),
)

view_sensor = dg.AutomationConditionSensorDefinition(
    "gate_summary_sensor",
    target=dg.AssetSelection.assets(GATE_SUMMARY),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Rebuilds gate_summary (every pair's gate on one page) once pairs' training files were "
        "built or quarantined and no pair's build is running (defs/overview.py: UPDATE_VIEW). "
        "On by default: it reads only the output root's gate reports, never the warehouse."
    ),
)


def failure_alert(
    context: dg.RunFailureSensorContext, alerts: AlertChannel, storage: Storage
) -> Alert:
    """The one alert of a failed run: a gate failure when the run's pair has a latest gate
    report, written by this run, that did not pass; else the failed steps' errors."""
    run = context.dagster_run
    url = alerts.run_url(run.run_id)
    pair = context.partition_key
    if pair:
        try:
            report = latest_report(storage, pair)
        except Exception as e:  # any storage or JSON error: the run's own alert still goes
            context.log.warning(f"the gate report of {pair} could not be read: {e}")
            report = None
        if report and report.get("run_id") == run.run_id and not report.get("passed"):
            return gate_alert(report, run.job_name, url)
    errors = [
        Problem(event.step_key or "run", one_line(_innermost(event)))
        for event in context.get_step_failure_events()
    ]
    if not errors:
        errors = [Problem("run", one_line(context.failure_event.message))]
    return run_alert(run.run_id, run.job_name, pair, url, errors)


def _innermost(event: dg.DagsterEvent) -> str:
    """A step failure's own error, not the wrappers Dagster puts around user code."""
    error = getattr(event.event_specific_data, "error", None)
    if error is None:
        return event.message or ""
    while error.cause is not None:
        error = error.cause
    # "bqx_assets.core.errors.ExtractionError: pair ..." as "ExtractionError: pair ...".
    head, sep, rest = error.message.partition(": ")
    if sep and error.cls_name and head.endswith(error.cls_name):
        return f"{error.cls_name}: {rest}"
    return error.message


@dg.run_failure_sensor(
    name="failure_alert_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Sends one alert per failed run of this code location (per run's last try, when run "
        "retries launch it again) through the `alerts` resource "
        "(a JSON webhook set by BQX_ALERT_WEBHOOK; unset, the alert is only logged): for a "
        "pair whose gate failed, the failed checks with their reasons; for any other failure, "
        "the failed steps' errors; and the link to the run (BQX_DAGSTER_URL). Each alert sent "
        "is kept under `alerts/` of the output root, so no failure is alerted twice."
    ),
)
def failure_alert_sensor(
    context: dg.RunFailureSensorContext,
    alerts: AlertChannel,
    training_io_manager: dg.ResourceParam[TrainingFileIOManager],
) -> None:
    # Returns None: the run status sensor then goes on to the next failed run of the same tick.
    # Nothing here raises: an error would fail the tick, not retry the run (its cursor moves on).
    run_id = context.dagster_run.run_id
    if context.dagster_run.tags.get(WILL_RETRY_TAG) == "true":
        # Run retries launch it again (dagster.prod.yaml: run_retries): only the last try of a
        # run is alerted, so a failure run retries fix (a database failover) sends nothing.
        context.log.info(
            f"run {run_id} failed and will be retried: its retry is alerted if it fails"
        )
        return
    storage = training_io_manager.storage()
    try:
        if alert_sent(storage, run_id):
            context.log.info(f"run {run_id}: its alert was already sent")
            return
    except Exception as e:  # an unreadable ledger must not keep the alert from going out
        context.log.warning(f"run {run_id}: could not tell whether its alert was sent: {e}")
    alert = failure_alert(context, alerts, storage)
    context.log.error(alert.text())
    try:
        channel = alerts.deliver(alert)
    except AlertDeliveryError as e:
        # Nothing is recorded: a later evaluation of this run (a retried tick) may still send it.
        context.log.error(f"run {run_id}: alert not delivered: {e}")
        return
    try:
        record_alert(storage, alert, channel)
    except Exception as e:  # sent but not recorded: only a retried tick could repeat it
        context.log.warning(f"run {run_id}: alert sent but not recorded under alerts/: {e}")
    context.log.info(f"run {run_id}: alert sent to {channel or 'the log only (no webhook set)'}")


WILL_RETRY_TAG = "dagster/will_retry"
"""Dagster sets it on a failed run when the instance's run retries will launch it again."""


automation: list[dg.SensorDefinition] = [refresh_sensor, view_sensor, failure_alert_sensor]
