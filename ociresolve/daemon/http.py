"""``/metrics``, ``/healthz`` and ``/readyz`` on the metrics address.

``/healthz`` answers 200 while the daemon's threads (watcher, API) run, 503 otherwise: a
liveness probe restarts a daemon that lost one. ``/readyz`` answers 503 until the initial scan
has indexed the node, then 200. Connections are served by threads, each with a socket
timeout, so a client that connects and never sends holds one thread for a few seconds only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from ociresolve.errors import OciresolveError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT: Final = 5.0

Check = Callable[[], bool]
Exposition = Callable[[], tuple[bytes, str]]


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise OciresolveError(f"metrics address {address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator asked for it


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The standard library's 5 would drop a probe's SYN behind a burst of connections, and
    # its retry comes a second later: past kubelet's default probe timeout.
    request_queue_size = 128


class HttpServer:
    def __init__(
        self, address: str, *, healthy: Check, ready: Check, metrics: Exposition | None
    ) -> None:
        host, port = parse_address(address)
        handler = _handler(healthy, ready, metrics)
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:
            raise OciresolveError(f"metrics address {address}: {exc.strerror}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="ociresolve-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    healthy: Check, ready: Check, metrics: Exposition | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT
        server_version = "ociresolve"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._check(healthy())
            elif path == "/readyz":
                self._check(ready())
            elif path == "/metrics" and metrics is not None:
                body, content_type = metrics()
                self._send(200, body, content_type)
            else:
                self._send(404, b"not found\n")

        def _check(self, ok: bool) -> None:
            self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http: " + format, *args)

    return Handler
