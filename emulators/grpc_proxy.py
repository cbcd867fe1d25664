"""A gRPC proxy in front of the emulator's Storage Read endpoint: every call forwarded as raw
bytes and recorded (to show what the client sent), and ReadRows answered RESOURCE_EXHAUSTED
with a `google.rpc.RetryInfo` delay for a while, as the Storage Read API answers a client over
its quota (the official reader retries exactly that error, after that delay:
google/cloud/bigquery_storage_v1/reader.py, `_resource_exhausted_exception_is_retryable`;
https://cloud.google.com/bigquery/quotas#storage-limits)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

SERVICE = "/google.cloud.bigquery.storage.v1.BigQueryRead/"


class StorageReadProxy:
    """Forwards BigQueryRead calls to `upstream` (`host:port`). With `exhausted_s`, every
    ReadRows call in the first `exhausted_s` seconds after the first one is refused with
    RESOURCE_EXHAUSTED carrying a RetryInfo of `retry_delay_s`."""

    def __init__(
        self, upstream: str, *, exhausted_s: float = 0.0, retry_delay_s: float = 1.0
    ) -> None:
        self.upstream = upstream
        self.exhausted_s = exhausted_s
        self.retry_delay_s = retry_delay_s
        self.lock = threading.Lock()
        self.requests: list[tuple[str, bytes]] = []
        """(method name, serialized request) of every call, in order."""
        self.refused = 0
        """ReadRows calls answered RESOURCE_EXHAUSTED."""
        self._first_read: float | None = None
        self._channel = grpc.insecure_channel(
            upstream, options=[("grpc.max_receive_message_length", -1)]
        )
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            options=[("grpc.max_send_message_length", -1),
                     ("grpc.max_receive_message_length", -1)],
        )  # fmt: skip
        self._server.add_generic_rpc_handlers([_Handler(self)])
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{port}"

    def create_read_sessions(self) -> list[Any]:
        """The CreateReadSessionRequests the client sent, decoded."""
        from google.cloud.bigquery_storage_v1 import types

        with self.lock:
            sent = [body for method, body in self.requests if method == "CreateReadSession"]
        return [types.CreateReadSessionRequest.deserialize(body) for body in sent]

    def _exhausted(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self._first_read is None:
                self._first_read = now
            if now - self._first_read < self.exhausted_s:
                self.refused += 1
                return True
            return False

    def refusal(self) -> grpc.Status:
        """RESOURCE_EXHAUSTED with a RetryInfo, as the API's status details carry it."""
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_delay_s * 1e9))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message="Exceeded rate limits: too many concurrent ReadRows requests",
            details=[detail],
        )
        return rpc_status.to_status(status)

    def __enter__(self) -> StorageReadProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
        self._channel.close()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: StorageReadProxy) -> None:
        self.proxy = proxy

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        if not method.startswith(SERVICE):
            return None
        name = method.removeprefix(SERVICE)
        proxy = self.proxy

        def record(request: bytes) -> None:
            with proxy.lock:
                proxy.requests.append((name, request))

        if name == "ReadRows":

            def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
                record(request)
                if proxy._exhausted():
                    context.abort_with_status(proxy.refusal())
                call = proxy._channel.unary_stream(method)(
                    request, timeout=context.time_remaining(), metadata=_metadata(context)
                )
                try:
                    yield from call
                except grpc.RpcError as exc:
                    context.abort(exc.code(), exc.details() or "")

            return grpc.unary_stream_rpc_method_handler(stream)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            record(request)
            try:
                return proxy._channel.unary_unary(method)(
                    request, timeout=context.time_remaining(), metadata=_metadata(context)
                )
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
                raise

        return grpc.unary_unary_rpc_method_handler(unary)


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in context.invocation_metadata() if not k.startswith("grpc-")]
