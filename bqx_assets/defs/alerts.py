"""Alerts: a failed run, or a pair's failed gate, as one message to a channel (a JSON webhook)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from bqx_assets.core.storage import Storage

AlertKind = Literal["gate_failure", "run_failure"]
ALERTS_PREFIX = "alerts"
"""The output root keeps `alerts/{run_id}.json` for each failed run whose alert went out: a
re-evaluation of the same failure (a tick retried after a crash, a reset cursor) finds it and
sends nothing, and a person can read what was sent."""
_LINE_CHARS = 300
"""A reason or an error, cut to this many characters in a message."""


@dataclass(frozen=True)
class Problem:
    """One line of an alert: a failed gate check and its reason, or a failed step and its error."""

    name: str
    reason: str


@dataclass(frozen=True)
class Alert:
    """What one failed run says: its pair, the failed gate checks (a gate failure) or the failed
    steps (any other failure), and where to look."""

    kind: AlertKind
    run_id: str
    job: str
    pair: str | None
    run_url: str
    problems: tuple[Problem, ...] = ()
    uri: str | None = None
    """The quarantined file of a gate failure."""
    checks_run: int = 0
    """How many gate checks the failed build ran (a gate failure)."""

    @property
    def title(self) -> str:
        if self.kind == "gate_failure":
            return (
                f"bqx: the gate failed for pair {self.pair}: {len(self.problems)} of "
                f"{self.checks_run} checks failed, the file was quarantined"
            )
        return f"bqx: a run of {self.job} failed" + (f" (pair {self.pair})" if self.pair else "")

    def text(self) -> str:
        """The message as a person reads it (Slack's and Teams' `text`)."""
        lines = [self.title]
        lines += [f"- {p.name}: {p.reason}" for p in self.problems]
        if self.uri:
            lines.append(f"quarantined file: {self.uri}")
        lines.append(f"run: {self.run_url}")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The JSON body: `text` for chat webhooks, the fields for anything that parses them."""
        key = "failed_checks" if self.kind == "gate_failure" else "failed_steps"
        return {
            "text": self.text(),
            "kind": self.kind,
            "pair": self.pair,
            "job": self.job,
            "run_id": self.run_id,
            "run_url": self.run_url,
            key: [{"name": p.name, "reason": p.reason} for p in self.problems],
            "uri": self.uri,
        }


def one_line(text: str | None) -> str:
    """The first line of a reason or an error, cut to a length a message holds."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= _LINE_CHARS else line[: _LINE_CHARS - 1] + "…"


def gate_alert(report: Mapping[str, Any], job: str, run_url: str) -> Alert:
    """The alert of a build whose gate failed, from its report (`core.publish.latest_report`):
    each failed check with the one-line summary it gave."""
    checks: Mapping[str, Any] = report.get("checks") or {}
    failed = report.get("failed") or [n for n, c in checks.items() if not c.get("passed")]
    problems = tuple(
        Problem(name, one_line(((checks.get(name) or {}).get("metadata") or {}).get("summary")))
        for name in failed
    )
    return Alert(
        kind="gate_failure",
        run_id=str(report.get("run_id")),
        job=job,
        pair=report.get("pair"),
        run_url=run_url,
        problems=problems,
        uri=report.get("uri"),
        checks_run=len(checks),
    )


def run_alert(
    run_id: str, job: str, pair: str | None, run_url: str, errors: Sequence[Problem]
) -> Alert:
    """The alert of a run that failed for any reason but the gate: each failed step's error."""
    return Alert("run_failure", run_id, job, pair, run_url, problems=tuple(errors))


class AlertDeliveryError(Exception):
    """An alert the channel did not take (unreachable, timed out, refused)."""


class AlertChannel(dg.ConfigurableResource):
    """Where alerts go. The webhook below is the default; a Slack or Teams client is another
    subclass with its own `deliver` (README: Automation)."""

    dagster_url: str = Field(
        default="http://localhost:3000",
        description="the Dagster webserver's base URL, for the run links of alerts",
    )

    def run_url(self, run_id: str) -> str:
        return f"{self.dagster_url.rstrip('/')}/runs/{run_id}"

    def deliver(self, alert: Alert) -> str | None:
        """Sends the alert; where it went (None: nowhere configured, it is only logged).
        Raises AlertDeliveryError when the channel does not take it."""
        raise NotImplementedError


class WebhookAlerts(AlertChannel):
    """Alerts POSTed as JSON (`Alert.payload`: a `text` line for chat webhooks, and the pair,
    failed checks or steps, and run link as fields); off while `url` is unset."""

    url: str | None = Field(default=None, description="the webhook; unset: alerts are only logged")
    timeout_seconds: float = Field(default=10.0, description="for the whole request")

    def deliver(self, alert: Alert) -> str | None:
        if not self.url:
            return None
        try:
            request = urllib.request.Request(
                self.url,
                data=json.dumps(alert.payload()).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            # HTTPError is a URLError; a timeout is an OSError; a malformed URL a ValueError.
            raise AlertDeliveryError(f"webhook {_host(self.url)}: {e}") from e
        return f"webhook {_host(self.url)}"


def _host(url: str) -> str:
    """The webhook's scheme and host, never its path (a chat webhook's path is its secret)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else "(malformed URL)"


def alert_key(run_id: str) -> str:
    return f"{ALERTS_PREFIX}/{run_id}.json"


def alert_sent(storage: Storage, run_id: str) -> bool:
    """Whether the run's alert already went out (`ALERTS_PREFIX`)."""
    return storage.stat(alert_key(run_id)) is not None


def record_alert(storage: Storage, alert: Alert, channel: str | None) -> None:
    """The alert as sent, and where, kept as the run's entry under `ALERTS_PREFIX`."""
    entry = {"sent_at": datetime.now(UTC).isoformat(), "channel": channel or "log"}
    storage.write_bytes(alert_key(alert.run_id), json.dumps({**entry, **alert.payload()}).encode())
