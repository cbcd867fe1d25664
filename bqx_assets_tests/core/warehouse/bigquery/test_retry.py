"""Which errors are retried and for how long: quotas get a budget of time and the server's
RetryInfo delay, daily quotas none, other transient errors a number of attempts."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.warehouse.bigquery.retry import (
    Retrier,
    RetrySettings,
    is_daily_quota,
    is_quota,
    is_transient,
    server_delay,
)


def _forbidden(reason: str, message: str = "Quota exceeded") -> gexc.Forbidden:
    return gexc.Forbidden(message, errors=[{"reason": reason, "message": message}])


def _exhausted(delay_s: float | None) -> gexc.ResourceExhausted:
    details = []
    if delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(delay_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return gexc.ResourceExhausted("over quota", details=details)


def test_errors_are_classed_as_bigquery_documents_them() -> None:
    daily = _forbidden("quotaExceeded", "Quota exceeded: your project exceeded quota for "
                       "extract bytes per day")  # fmt: skip
    assert is_quota(_forbidden("rateLimitExceeded")) and is_transient(
        _forbidden("rateLimitExceeded")
    )
    assert is_quota(_forbidden("quotaExceeded")) and is_transient(_forbidden("quotaExceeded"))
    assert is_quota(gexc.TooManyRequests("429")) and is_quota(_exhausted(1.0))
    assert is_daily_quota(daily) and not is_quota(daily) and not is_transient(daily)
    assert is_transient(gexc.ServiceUnavailable("503")) and not is_quota(
        gexc.ServiceUnavailable("")
    )
    assert not is_transient(_forbidden("accessDenied")) and not is_transient(gexc.BadRequest(""))
    assert server_delay(_exhausted(2.5)) == pytest.approx(2.5)
    assert server_delay(_exhausted(None)) is None and server_delay(gexc.BadRequest("")) is None


def _failing(errors: list[BaseException]) -> tuple[list[int], object]:
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if calls[0] <= len(errors):
            raise errors[calls[0] - 1]
        return "done"

    return calls, fn


def test_quota_refusals_are_retried_past_the_attempts_waiting_the_server_s_delay() -> None:
    settings = RetrySettings(attempts=2, initial_s=0.001, maximum_s=0.002, quota_budget_s=5)
    retrier = Retrier("p", settings)
    calls, fn = _failing([_exhausted(0.05)] * 5)
    assert retrier.call("d.t", fn) == "done"  # type: ignore[arg-type]
    assert calls[0] == 6 and retrier.retries == 5
    assert retrier.waited_s == pytest.approx(0.25)


def test_quota_refusals_stop_at_the_budget_and_others_at_the_attempts() -> None:
    retrier = Retrier("p", RetrySettings(attempts=2, initial_s=0.001, maximum_s=0.002,
                                         quota_budget_s=0.2))  # fmt: skip
    calls, fn = _failing([_exhausted(0.05)] * 100)
    with pytest.raises(WarehouseError, match=r"d\.t: still failing after retries"):
        retrier.call("d.t", fn)  # type: ignore[arg-type]
    assert 4 <= calls[0] <= 6
    calls, fn = _failing([gexc.ServiceUnavailable("503")] * 100)
    with pytest.raises(WarehouseError, match=r"d\.t: still failing after retries"):
        retrier.call("d.t", fn)  # type: ignore[arg-type]
    assert calls[0] == 2


def test_a_daily_quota_is_one_clear_error_without_retries() -> None:
    retrier = Retrier("p", RetrySettings())
    daily = _forbidden("quotaExceeded", "Quota exceeded: too many jobs per day")
    calls, fn = _failing([daily])
    with pytest.raises(WarehouseError, match=r"d\.t: a daily quota is exhausted \(not retried"):
        retrier.call("d.t", fn)  # type: ignore[arg-type]
    assert calls[0] == 1 and retrier.retries == 0


def test_a_stream_s_deadline_is_per_attempt() -> None:
    """An attempt that read for longer than `deadline_s` before it dropped is retried when
    each attempt has its own deadline (streams); bounded across attempts otherwise."""
    import time

    settings = RetrySettings(attempts=3, initial_s=0.001, maximum_s=0.002, deadline_s=0.1)

    def long_then_drop() -> object:
        calls = [0]

        def fn() -> str:
            calls[0] += 1
            if calls[0] == 1:
                time.sleep(0.15)
                raise gexc.ServiceUnavailable("stream dropped")
            return "done"

        return fn

    assert Retrier("p", settings).call("d.t", long_then_drop(), overall_deadline=False) == "done"  # type: ignore[arg-type]
    with pytest.raises(WarehouseError, match="still failing after retries"):
        Retrier("p", settings).call("d.t", long_then_drop())  # type: ignore[arg-type]
