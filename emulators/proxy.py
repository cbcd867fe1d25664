"""Proxies between a Google client and an emulator that answer as the real service would where
the emulator cannot: transient HTTP errors, limits and states the emulator does not have,
connections cut mid-stream."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class _Server(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.faults_injected = 0
        self.forwarded = 0

    def take_fault(self, budget: int) -> bool:
        """Whether this request or connection gets a fault (the first `budget` ones do)."""
        with self.lock:
            if self.faults_injected < budget:
                self.faults_injected += 1
                return True
            self.forwarded += 1
            return False


class HttpFaultProxy(_Server):
    """An HTTP reverse proxy that answers the first `faults` requests with `status` (a
    BigQuery-shaped JSON error) and forwards everything else to `upstream`. With `path_contains`,
    only requests whose path contains it get faults."""

    def __init__(
        self,
        upstream: str,
        faults: int,
        status: int = 503,
        *,
        reason: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        super().__init__()
        self.upstream = upstream.removeprefix("http://")
        self.faults = faults
        self.status = status
        self.reason = reason or ("backendError" if status >= 500 else "rateLimitExceeded")
        self.path_contains = path_contains
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                wanted = proxy.path_contains is None or proxy.path_contains in self.path
                if wanted and proxy.take_fault(proxy.faults):
                    payload = (
                        f'{{"error": {{"code": {proxy.status}, "message": "injected fault",'
                        f' "errors": [{{"reason": "{proxy.reason}", "message": "injected"}}]}}}}'
                    ).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                request = Exchange(self.command, self.path, dict(self.headers.items()), body or b"")
                status, headers, data = forward(proxy.upstream, request)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Exchange:
    """One request through an `HttpAnswerProxy`, and the upstream's response once forwarded."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    response: bytes = b""

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.partition("?")[0]

    def json(self) -> Any:
        """The request's JSON body (None without one)."""
        return json.loads(self.body) if self.body else None

    def response_json(self) -> Any:
        return json.loads(self.response) if self.response else None


@dataclass(frozen=True)
class Reply:
    """What the proxy answers instead of the upstream's response."""

    status: int
    body: Any
    """JSON-able."""


Rule = Callable[[Exchange], "Reply | None"]
"""Looks at an exchange; returns the reply to send instead, or None to leave it as it is."""

Rewrite = Callable[[Exchange], "bytes | None"]
"""Looks at a request before it is forwarded; returns the body to forward instead (so that
the emulator answers a request it cannot take as sent), or None to forward it as it is. The
exchange keeps the body the client sent."""


def forward(
    upstream: str, exchange: Exchange, body: bytes | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The request of `exchange` (with `body` in place of its own, where given) sent to
    `upstream` (`host:port`): the response's status, headers and body."""
    connection = http.client.HTTPConnection(upstream.removeprefix("http://"), timeout=120)
    try:
        sent = {k: v for k, v in exchange.headers.items()
                if k.lower() not in ("host", "content-length")}  # fmt: skip
        data = exchange.body if body is None else body
        connection.request(exchange.method, exchange.path, body=data or None, headers=sent)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def bigquery_error(status: int, reason: str, message: str) -> Reply:
    """An error as the BigQuery REST API answers one: `{"error": {"code", "message", "errors":
    [{"reason", "message"}], "status"}}` (https://cloud.google.com/bigquery/docs/error-messages)."""
    statuses = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}  # fmt: skip
    error = {"reason": reason, "message": message, "domain": "global"}
    return Reply(
        status,
        {"error": {"code": status, "message": message, "errors": [error],
                   "status": statuses.get(status, "UNKNOWN")}},
    )  # fmt: skip


class HttpAnswerProxy(_Server):
    """An HTTP reverse proxy that answers some requests itself, as the real service would where
    the emulator behind it cannot: each `before` rule may answer a request instead of forwarding
    it (a refusal, a limit); each `after` rule may replace the upstream's response (a field the
    emulator does not report, a state it does not have). The first rule that answers wins.
    Every exchange is kept in `exchanges`, to count what the client sent."""

    def __init__(
        self,
        upstream: str,
        *,
        before: Sequence[Rule] = (),
        after: Sequence[Rule] = (),
        rewrite: Sequence[Rewrite] = (),
    ) -> None:
        super().__init__()
        self.upstream = upstream.removeprefix("http://")
        self.before = list(before)
        self.after = list(after)
        self.rewrite = list(rewrite)
        self.exchanges: list[Exchange] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                exchange = Exchange(
                    self.command, self.path, dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                )  # fmt: skip
                with proxy.lock:
                    proxy.exchanges.append(exchange)
                reply = _first(proxy.before, exchange)
                headers = [("Content-Type", "application/json")]
                if reply is None:
                    body = exchange.body
                    for rewrite in proxy.rewrite:
                        body = rewrite(exchange) or body
                    exchange.status, headers, exchange.response = forward(
                        proxy.upstream, exchange, body
                    )
                    reply = _first(proxy.after, exchange)
                if reply is None:
                    self._send(exchange.status or 502, exchange.response, headers)
                    return
                data = json.dumps(reply.body).encode()
                exchange.status, exchange.response = reply.status, data
                self._send(reply.status, data, [("Content-Type", "application/json")])

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def sent(self, method: str, path_contains: str) -> list[Exchange]:
        """The exchanges of requests with this method whose path contains `path_contains`."""
        with self.lock:
            return [e for e in self.exchanges if e.method == method and path_contains in e.path]

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpAnswerProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first(rules: Sequence[Rule], exchange: Exchange) -> Reply | None:
    for rule in rules:
        reply = rule(exchange)
        if reply is not None:
            return reply
    return None


class TcpFaultProxy(_Server):
    """A TCP proxy (for gRPC) that drops the first `drops` connections: it accepts them, then
    resets them once the client has sent its first bytes. Later connections are piped through.

    With `cut_after_bytes`, a dropped connection is instead piped through until the server has
    sent that many bytes, then ended in the middle of a streamed response: the client receives
    exactly those bytes, then the end of the connection. With `cut_with_reset` it is reset
    instead, which also discards what still sits in the proxy's send buffer, so how much of the
    response arrives depends on how fast the client reads. The server's side is reset.
    """

    def __init__(
        self,
        upstream: str,
        drops: int,
        *,
        cut_after_bytes: int | None = None,
        cut_with_reset: bool = False,
    ) -> None:
        super().__init__()
        self.cut_after_bytes = cut_after_bytes
        self.cut_with_reset = cut_with_reset
        self.cuts = 0
        """Connections cut mid-response (ended, or reset with `cut_with_reset`)."""
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.drops = drops
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []

    def run(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        fault = self.take_fault(self.drops)
        if fault and self.cut_after_bytes is None:
            with contextlib.suppress(OSError):
                client.recv(65536)
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        limit = self.cut_after_bytes if fault else None
        threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()
        self._pipe(client, upstream, None)

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    with self.lock:
                        self.cuts += 1
                    if self.cut_with_reset:
                        _reset(dst)
                    else:
                        # Every byte sent so far, then the end of the connection (FIN).
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                    _reset(src)
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> TcpFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    """Drop a connection with RST (SO_LINGER 0), the way a crashed peer or a load balancer does.

    shutdown() first: close() alone leaves the connection open while another thread is blocked
    in recv() on it, and the client would wait for data that never comes.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# -- loading: seeding the emulator's datasets ---------------------------------------------
