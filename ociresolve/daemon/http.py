"""``/metrics``, ``/healthz`` and ``/readyz`` on the metrics address.

``/healthz`` answers 200 while the daemon's threads (watcher, API) run, 503 otherwise: a
liveness probe restarts a daemon that lost one. A daemon that runs degraded (directories it
could not watch, rescanned until it can: a restart would not help) answers 200 with
``degraded: <why>`` instead of ``ok``. ``/readyz`` answers 503 until the initial scan
has indexed the node, then 200. One thread serves every connection (``BoundedHttpServer``):
a request has ``REQUEST_TIMEOUT`` seconds in all, however slowly it trickles in, and at most
``MAX_CONNECTIONS`` are open (a new one closes the oldest), so slow clients cost no thread and
no memory that stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from ociresolve.daemon.boundedhttp import BoundedHttpServer, BufferedHandler
from ociresolve.errors import OciresolveError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT: Final = 5.0  # from the connection to the answer's last byte
MAX_CONNECTIONS: Final = 256

Check = Callable[[], bool]
Degraded = Callable[[], str | None]  # why the daemon runs degraded, or None
Exposition = Callable[[], tuple[bytes, str]]


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise OciresolveError(f"metrics address {address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator asked for it


class HttpServer:
    def __init__(
        self,
        address: str,
        *,
        healthy: Check,
        ready: Check,
        metrics: Exposition | None,
        degraded: Degraded | None = None,
        request_timeout: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        host, port = parse_address(address)
        handler = _handler(healthy, ready, metrics, degraded)
        try:
            self._server = BoundedHttpServer(
                host,
                port,
                handler,
                request_timeout=REQUEST_TIMEOUT if request_timeout is None else request_timeout,
                max_connections=MAX_CONNECTIONS if max_connections is None else max_connections,
            )
        except OSError as exc:
            raise OciresolveError(f"metrics address {address}: {exc.strerror}") from exc

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def start(self) -> HttpServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


def _handler(
    healthy: Check, ready: Check, metrics: Exposition | None, degraded: Degraded | None
) -> type[BufferedHandler]:
    class Handler(BufferedHandler):
        server_version = "ociresolve"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = healthy()
                why = degraded() if alive and degraded is not None else None
                if why is None:
                    self._check(alive)
                else:
                    self._send(200, f"degraded: {why}\n".encode())
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
