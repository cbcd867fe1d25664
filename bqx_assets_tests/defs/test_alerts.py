"""Alerts: a failed gate and a failed run arrive as one message each at a webhook on 127.0.0.1,
with the pair, the failed checks or steps and the run link; nothing is sent twice."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.publish import latest_report
from bqx_assets.core.storage import LocalStorage
from bqx_assets.defs.alerts import (
    AlertDeliveryError,
    Problem,
    WebhookAlerts,
    alert_key,
    gate_alert,
    one_line,
    run_alert,
)
from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.automation import WILL_RETRY_TAG, failure_alert_sensor
from bqx_assets.defs.resources import CheckpointStore
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.defs.pipeline import PAIR, resources

DAGSTER_URL = "http://dagster.example:3000"


class Receiver:
    """A webhook on 127.0.0.1: keeps each JSON body POSTed to it; answers `status` after
    `delay` seconds."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.messages.append(json.loads(body))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@pytest.fixture(scope="module")
def failed_runs(
    tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path], warehouses: Warehouses
) -> dict[str, Any]:
    """One instance with two failed runs of PAIR, on one output root: a build whose gate failed
    (the regime family all null: quarantined), then a build that found no checkpoints (a step
    error; the pair's latest gate report is still the first run's)."""
    catalog, catalog_path = mini
    root = tmp_path_factory.mktemp("alerts")
    faulty = warehouses.path(catalog, pairs=MINI_PAIRS, rows=600, faults=("allnull:regime",))
    res = resources(root, catalog_path, faulty)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([shared_checkpoints], resources=res, instance=instance).success
    gate = dg.materialize(
        [pair_checkpoints, training_file], partition_key=PAIR, resources=res, instance=instance,
        raise_on_error=False,
    )  # fmt: skip
    assert not gate.success
    empty = {**res, "checkpoints": CheckpointStore(root=str(root / "none"))}
    step = dg.materialize(
        [training_file], partition_key=PAIR, resources=empty, instance=instance,
        raise_on_error=False,
    )  # fmt: skip
    assert not step.success
    return {"instance": instance, "root": root, "res": res, "gate": gate, "step": step}


def _evaluate(
    failed_runs: dict[str, Any],
    which: str,
    alerts: WebhookAlerts,
    *,
    output: Path | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """The alert sensor's evaluation of one failed run, as the daemon's run status sensor makes
    it (the partition key from the run's partition)."""
    run: dg.ExecuteInProcessResult = failed_runs[which]
    res = failed_runs["res"]
    io = res["training_io_manager"]
    if output is not None:
        io = type(io)(output_root=str(output))
    context = dg.build_run_status_sensor_context(
        sensor_name=failure_alert_sensor.name,
        dagster_event=run.get_run_failure_event(),
        dagster_instance=failed_runs["instance"],
        dagster_run=run.dagster_run.with_tags({**run.dagster_run.tags, **(tags or {})}),
        resources={"alerts": alerts, "training_io_manager": io},
        partition_key=PAIR,
    )
    assert failure_alert_sensor(context) is None


def _webhook(url: str, **kwargs: Any) -> WebhookAlerts:
    return WebhookAlerts(url=url, dagster_url=DAGSTER_URL, **kwargs)


def test_a_gate_failure_arrives_as_one_message_with_the_failed_checks_and_the_run_link(
    failed_runs: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_id = failed_runs["gate"].run_id
    report = latest_report(LocalStorage(failed_runs["root"] / "out"), PAIR)
    # The fixture's later run of the pair left no report: the first build's is the latest.
    assert report is not None and report["run_id"] == run_id
    _copy_reports(failed_runs["root"] / "out", out)

    _evaluate(failed_runs, "gate", _webhook(receiver.url), output=out)
    (message,) = receiver.messages
    assert message["kind"] == "gate_failure" and message["pair"] == PAIR
    assert message["run_url"] == f"{DAGSTER_URL}/runs/{run_id}"
    failed = {c["name"]: c["reason"] for c in message["failed_checks"]}
    assert "null_completeness" in failed and set(failed) == set(report["failed"])
    assert "regime" in failed["null_completeness"]
    summaries = {n: c["metadata"]["summary"] for n, c in report["checks"].items()}
    assert failed == {name: one_line(summaries[name]) for name in failed}
    text = message["text"]
    assert text.startswith(f"bqx: the gate failed for pair {PAIR}: {len(failed)} of ")
    assert f"{len(CHECK_NAMES)} checks failed" in text
    assert "- null_completeness: " in text and f"run: {DAGSTER_URL}/runs/{run_id}" in text
    assert message["uri"] and "quarantine/" in message["uri"]
    sent = json.loads((out / alert_key(run_id)).read_bytes())
    assert sent["channel"] == f"webhook http://127.0.0.1:{receiver.server.server_address[1]}"
    assert "secret-token" not in sent["channel"]

    # A second evaluation of the same failure (a retried tick, a reset cursor) sends nothing.
    _evaluate(failed_runs, "gate", _webhook(receiver.url), output=out)
    assert len(receiver.messages) == 1


def test_a_failed_run_without_a_gate_failure_arrives_with_its_step_error(
    failed_runs: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    """The pair's latest gate report is an earlier run's: this run's alert is its step error,
    not that run's gate failure again."""
    out = tmp_path / "out"
    _copy_reports(failed_runs["root"] / "out", out)
    run_id = failed_runs["step"].run_id
    _evaluate(failed_runs, "step", _webhook(receiver.url), output=out)
    _evaluate(failed_runs, "step", _webhook(receiver.url), output=out)
    (message,) = receiver.messages
    assert message["kind"] == "run_failure" and message["pair"] == PAIR
    assert message["run_url"] == f"{DAGSTER_URL}/runs/{run_id}"
    (step,) = message["failed_steps"]
    assert step["name"] == "training_file"
    # The step's own error, not Dagster's "Error occurred while executing op" wrapper.
    assert step["reason"].startswith(f"ExtractionError: pair {PAIR}: 15 of 15 tables have no")
    assert message["text"].startswith("bqx: a run of __ephemeral_asset_job__ failed (pair eurusd)")
    assert "failed_checks" not in message


def test_a_run_that_will_be_retried_is_not_alerted_its_last_try_is(
    failed_runs: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    """Run retries launch a failed run again (a database failover, a preempted container):
    nothing is sent for the try that will be retried; the same failure on the last try is."""
    out = tmp_path / "out"
    _copy_reports(failed_runs["root"] / "out", out)
    webhook = _webhook(receiver.url)
    _evaluate(failed_runs, "step", webhook, output=out, tags={WILL_RETRY_TAG: "true"})
    assert receiver.messages == []
    assert not (out / alert_key(failed_runs["step"].run_id)).exists()
    _evaluate(failed_runs, "step", webhook, output=out, tags={WILL_RETRY_TAG: "false"})
    assert [m["kind"] for m in receiver.messages] == ["run_failure"]


def test_an_undelivered_alert_is_logged_not_raised_and_sent_once_the_channel_is_back(
    failed_runs: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _copy_reports(failed_runs["root"] / "out", out)
    run_id = failed_runs["step"].run_id
    _evaluate(failed_runs, "step", _webhook(_closed_port_url()), output=out)
    receiver.status = 500
    _evaluate(failed_runs, "step", _webhook(receiver.url), output=out)
    assert len(receiver.messages) == 1  # refused: not recorded as sent
    assert not (out / alert_key(run_id)).exists()
    receiver.status = 200
    _evaluate(failed_runs, "step", _webhook(receiver.url), output=out)
    _evaluate(failed_runs, "step", _webhook(receiver.url), output=out)
    assert len(receiver.messages) == 2 and (out / alert_key(run_id)).exists()


def test_without_a_webhook_the_alert_is_only_logged_once(
    failed_runs: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _copy_reports(failed_runs["root"] / "out", out)
    run_id = failed_runs["gate"].run_id
    _evaluate(failed_runs, "gate", WebhookAlerts(), output=out)
    sent = json.loads((out / alert_key(run_id)).read_bytes())
    assert sent["channel"] == "log" and sent["run_url"] == f"http://localhost:3000/runs/{run_id}"


def test_the_webhook_gives_up_after_its_timeout(receiver: Receiver) -> None:
    receiver.delay = 2.0
    alert = gate_alert({"pair": PAIR, "run_id": "r1", "checks": {}}, "job", "url")
    started = time.monotonic()
    with pytest.raises(AlertDeliveryError, match=r"webhook http://127\.0\.0\.1:\d+: .*timed out"):
        _webhook(receiver.url, timeout_seconds=0.3).deliver(alert)
    assert time.monotonic() - started < 1.5


def test_a_malformed_webhook_url_is_a_delivery_error_that_names_no_secret() -> None:
    alert = gate_alert({"pair": PAIR, "run_id": "r1", "checks": {}}, "job", "url")
    with pytest.raises(AlertDeliveryError, match=r"webhook \(malformed URL\)"):
        _webhook("hooks.example/secret-token").deliver(alert)


def test_a_gate_alert_lists_each_failed_check_with_its_first_line() -> None:
    report = {
        "pair": "gbpusd",
        "run_id": "abc",
        "uri": "data/output/quarantine/training_gbpusd.x.parquet",
        "failed": ["row_count"],
        "checks": {
            "row_count": {"passed": False, "metadata": {"summary": "12 rows, not 600\nmore"}},
            "column_count": {"passed": True, "metadata": {"summary": "ok"}},
        },
    }
    alert = gate_alert(report, "pair_training_job", f"{DAGSTER_URL}/runs/abc")
    assert alert.text() == (
        "bqx: the gate failed for pair gbpusd: 1 of 2 checks failed, the file was quarantined\n"
        "- row_count: 12 rows, not 600\n"
        "quarantined file: data/output/quarantine/training_gbpusd.x.parquet\n"
        f"run: {DAGSTER_URL}/runs/abc"
    )
    assert one_line("x" * 400).endswith("…") and len(one_line("x" * 400)) == 300
    assert one_line(None) == "" and one_line("  \n") == ""


def _copy_reports(src: Path, dest: Path) -> None:
    """The gate reports of `src` in a fresh output root (each test keeps its own alert ledger)."""
    for path in (src / "gate").glob("*.json"):
        (dest / "gate").mkdir(parents=True, exist_ok=True)
        (dest / "gate" / path.name).write_bytes(path.read_bytes())


def test_a_run_alert_without_a_pair_names_the_job() -> None:
    alert = run_alert("r2", "shared_checkpoints_job", None, "u", [Problem("step", "boom")])
    assert alert.text() == "bqx: a run of shared_checkpoints_job failed\n- step: boom\nrun: u"
    assert alert.payload()["failed_steps"] == [{"name": "step", "reason": "boom"}]
