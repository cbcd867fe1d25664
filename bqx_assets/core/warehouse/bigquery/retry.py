"""Which BigQuery errors pass with time, and the retry budget for them.

BigQuery documents two kinds of quota refusal (https://cloud.google.com/bigquery/docs/troubleshoot-quotas):
`rateLimitExceeded`, a short-term limit to retry after seconds with exponential back-off, and
`quotaExceeded`, a long-term limit to retry after ten minutes or more. Both, 429 and the Storage
Read API's RESOURCE_EXHAUSTED get a budget of minutes (`RetrySettings.quota_budget_s`) instead
of the few attempts other transient errors get; a daily quota (an extract job's bytes or jobs
per day) does not pass within a run and is not retried at all.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
import tenacity
from google.api_core import exceptions as gexc

from bqx_assets.core.errors import WarehouseError

log = logging.getLogger(__name__)

T = TypeVar("T")

# BigQuery answers 403 with these reasons for quota and rate limits, which pass with time.
_QUOTA_403_REASONS = frozenset({"rateLimitExceeded", "quotaExceeded"})
_TRANSIENT_403_REASONS = _QUOTA_403_REASONS | {"backendError"}

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,  # 429, and gRPC RESOURCE_EXHAUSTED (gexc.ResourceExhausted)
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.Unknown,  # a gRPC transport error with no status (connection reset mid-stream)
    gexc.RetryError,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def _reasons(exc: BaseException) -> set[str]:
    errors = getattr(exc, "errors", None) or []
    return {e.get("reason") for e in errors if isinstance(e, dict)}


def is_daily_quota(exc: BaseException) -> bool:
    """A `quotaExceeded` refusal of a per-day quota (extract bytes or jobs per day, and the
    like): it passes at the earliest the next day, never within a run's retries."""
    return (
        isinstance(exc, gexc.ClientError)
        and "quotaExceeded" in _reasons(exc)
        and "per day" in str(exc).lower()
    )


def is_quota(exc: BaseException) -> bool:
    """A quota or rate-limit refusal that passes with minutes: 429, gRPC RESOURCE_EXHAUSTED,
    403 `rateLimitExceeded` / `quotaExceeded` (not a daily quota)."""
    if is_daily_quota(exc):
        return False
    if isinstance(exc, gexc.TooManyRequests):
        return True
    return isinstance(exc, gexc.Forbidden) and bool(_reasons(exc) & _QUOTA_403_REASONS)


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt can get past: 429, 5xx, deadlines, dropped connections,
    quotas that pass with minutes."""
    if is_daily_quota(exc):
        return False
    if isinstance(exc, gexc.Forbidden):
        return bool(_reasons(exc) & _TRANSIENT_403_REASONS)
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    try:
        import google.auth.exceptions

        return isinstance(exc, google.auth.exceptions.TransportError)
    except ImportError:  # pragma: no cover - google-auth always comes with the clients
        return False


def server_delay(exc: BaseException) -> float | None:
    """The delay the server asks for before the next attempt: a `google.rpc.RetryInfo` in the
    error's details, as the official Storage Read reader honours it
    (google/cloud/bigquery_storage_v1/reader.py, `_resource_exhausted_exception_is_retryable`);
    None without one."""
    from google.rpc import error_details_pb2

    for detail in getattr(exc, "details", None) or ():
        if isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
            delay = detail.retry_delay
            return max(0.0, float(delay.seconds) + float(delay.nanos) / 1e9)
    return None


@dataclass(frozen=True)
class RetrySettings:
    """Bounded exponential backoff with full jitter for transient errors; quota and rate-limit
    refusals get a budget of time instead of a number of attempts."""

    attempts: int = 6
    initial_s: float = 0.5
    maximum_s: float = 30.0
    deadline_s: float = 600.0
    """Across the attempts of one call, for errors other than quotas."""
    quota_budget_s: float = 900.0
    """How long one call keeps retrying quota and rate-limit refusals (BigQuery: retry a
    `quotaExceeded` after ten minutes or more), waiting the server's RetryInfo delay where it
    gives one, jittered exponential back-off up to `maximum_s` otherwise."""


class Retrier:
    """Calls with bounded retries of transient errors, counted (for run metadata)."""

    def __init__(self, project: str, settings: RetrySettings) -> None:
        self.project = project
        self.settings = settings
        self._retries = 0
        self._waited_s = 0.0
        self._lock = threading.Lock()

    @property
    def retries(self) -> int:
        """Transient failures retried so far."""
        return self._retries

    @property
    def waited_s(self) -> float:
        """Seconds slept between attempts so far."""
        return self._waited_s

    def _stop(self, overall: bool) -> Callable[[tenacity.RetryCallState], bool]:
        settings = self.settings

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            elapsed = state.seconds_since_start or 0.0
            if exc is not None and is_quota(exc):
                return elapsed >= settings.quota_budget_s
            if state.attempt_number >= settings.attempts:
                return True
            return overall and elapsed >= settings.deadline_s

        return stop

    def _wait(self, state: tenacity.RetryCallState) -> float:
        settings = self.settings
        exc = state.outcome.exception() if state.outcome else None
        delay = server_delay(exc) if exc is not None else None
        if delay is None:
            # Full jitter: uniform in [0, min(maximum, initial * 2^n)].
            ceiling = min(settings.maximum_s, settings.initial_s * 2 ** (state.attempt_number - 1))
            delay = random.uniform(0, ceiling)
        with self._lock:
            self._waited_s += delay
        return delay

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self._retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "bigquery: transient error (attempt %d), retrying: %r", state.attempt_number, exc
        )

    def call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        transient: Callable[[BaseException], bool] = is_transient,
        overall_deadline: bool = True,
    ) -> T:
        """Run `fn` with retries of `transient` errors; any other error, or retries running
        out, becomes a WarehouseError naming `what` (`dataset.table`). Without
        `overall_deadline`, `deadline_s` does not bound the attempts together: each attempt
        has its own deadline (a stream's, which may take minutes of reading before it drops)."""
        retrying = tenacity.Retrying(
            stop=self._stop(overall_deadline),
            wait=self._wait,
            retry=tenacity.retry_if_exception(transient),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return retrying(fn)
        except WarehouseError:
            raise
        except gexc.NotFound as exc:
            if "in location" in str(exc):
                raise WarehouseError(
                    f"{what}: not found in the location the request named (a location "
                    f"mismatch, not a missing table): {exc}"
                ) from exc
            raise WarehouseError(f"{what}: not found in project {self.project}: {exc}") from exc
        except Exception as exc:
            if is_daily_quota(exc):
                raise WarehouseError(
                    f"{what}: a daily quota is exhausted (not retried, it passes the next "
                    f"day at the earliest): {exc}"
                ) from exc
            kind = "still failing after retries" if transient(exc) else "failed"
            raise WarehouseError(f"{what}: {kind}: {type(exc).__name__}: {exc}") from exc
