"""Which BigQuery errors pass with time, and the retry budget for them."""

from __future__ import annotations

import logging
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
_TRANSIENT_403_REASONS = frozenset({"rateLimitExceeded", "backendError", "quotaExceeded"})

_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    gexc.TooManyRequests,
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


def is_transient(exc: BaseException) -> bool:
    """True for errors a later attempt can get past: 429, 5xx, deadlines, dropped connections."""
    if isinstance(exc, gexc.Forbidden):
        reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
        return bool(reasons & _TRANSIENT_403_REASONS)
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    try:
        import google.auth.exceptions

        return isinstance(exc, google.auth.exceptions.TransportError)
    except ImportError:  # pragma: no cover - google-auth always comes with the clients
        return False


@dataclass(frozen=True)
class RetrySettings:
    """Bounded exponential backoff with full jitter for transient errors."""

    attempts: int = 6
    initial_s: float = 0.5
    maximum_s: float = 30.0
    deadline_s: float = 600.0


class Retrier:
    """Calls with bounded retries of transient errors, counted (for run metadata)."""

    def __init__(self, project: str, settings: RetrySettings) -> None:
        self.project = project
        self.settings = settings
        self._retries = 0
        self._lock = threading.Lock()

    @property
    def retries(self) -> int:
        """Transient failures retried so far."""
        return self._retries

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        with self._lock:
            self._retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "bigquery: transient error (attempt %d), retrying: %r", state.attempt_number, exc
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` with bounded retries of transient errors; any other error, or retries running
        out, becomes a WarehouseError naming `what` (`dataset.table`)."""
        settings = self.settings
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.attempts)
            | tenacity.stop_after_delay(settings.deadline_s),
            wait=tenacity.wait_random_exponential(
                multiplier=settings.initial_s, max=settings.maximum_s
            ),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return retrying(fn)
        except WarehouseError:
            raise
        except gexc.NotFound as exc:
            raise WarehouseError(f"{what}: not found in project {self.project}: {exc}") from exc
        except Exception as exc:
            kind = "still failing after retries" if is_transient(exc) else "failed"
            raise WarehouseError(f"{what}: {kind}: {type(exc).__name__}: {exc}") from exc
