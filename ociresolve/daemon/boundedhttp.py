"""A small HTTP/1.0 server for probes and scrapes whose cost a client cannot grow: one thread
and one event loop whatever the clients do.

* A request has ``request_timeout`` seconds from its connection to the last byte of its answer
  (not per read: a client trickling a byte a second is cut at the deadline, as one that sends
  nothing).
* At most ``max_connections`` connections are open; a new one closes the oldest (a probe sends
  its request at once, so an attacker's idle connections go first).
* A request's head is at most ``MAX_HEAD`` bytes (431 beyond); a body is never read; one
  request per connection.

Requests are answered by a ``BufferedHandler`` (the standard library's request parsing and
error pages), from the bytes read, on the loop: its ``do_GET`` must be quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Final

log = logging.getLogger(__name__)

MAX_HEAD: Final = 16 * 1024
# The standard library's 5 would drop a probe's SYN behind a burst of connections, and its
# retry comes a second later: past kubelet's default probe timeout.
BACKLOG: Final = 128
_END_OF_HEAD: Final = b"\r\n\r\n"
_TOO_LARGE: Final = (
    b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


class BufferedHandler(BaseHTTPRequestHandler):
    """A request handler over bytes: the request's head in, the answer in ``answer``."""

    def __init__(self, head: bytes, client_address: tuple[str, int]) -> None:  # no socket
        self.client_address = client_address
        self.rfile = io.BytesIO(head)
        self._answer = self.wfile = io.BytesIO()
        self.handle_one_request()

    @property
    def answer(self) -> bytes:
        return self._answer.getvalue()


class BoundedHttpServer:
    """Serves ``handler`` on a listening socket bound at once (``OSError`` if it cannot be),
    from ``start()`` to ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[BufferedHandler],
        *,
        request_timeout: float,
        max_connections: int,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self.handler = handler
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._open: dict[asyncio.StreamWriter, None] = {}  # oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ociresolve-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def connections(self) -> int:
        return len(self._open)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
            self._thread.join(2.0)
        self._socket.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("the metrics server failed")
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, sock=self._socket, limit=MAX_HEAD, backlog=BACKLOG
        )
        self._started.set()
        await self._stopping.wait()
        server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self.max_connections:
            oldest = next(iter(self._open))
            del self._open[oldest]
            oldest.transport.abort()
        self._open[writer] = None
        done = False
        try:
            async with asyncio.timeout(self.request_timeout):
                answer = await self._answer(reader, writer)
                if answer:
                    writer.transport.set_write_buffer_limits(high=0)  # drain: all of it sent
                    writer.write(answer)
                    await writer.drain()
                done = True
        except (TimeoutError, OSError):
            pass  # cut at the deadline, or gone
        finally:
            self._open.pop(writer, None)
            if done:
                writer.close()
            else:
                writer.transport.abort()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            head = await reader.readuntil(_END_OF_HEAD)
        except asyncio.LimitOverrunError:
            return _TOO_LARGE
        except asyncio.IncompleteReadError as exc:  # the client stopped sending: answer that
            head = exc.partial
            if not head or writer.transport.is_closing():  # nothing, or closed to make room
                return b""
        peer = writer.get_extra_info("peername")
        address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("", 0)
        try:
            return self.handler(head, address).answer
        except Exception:
            log.exception("the metrics server failed to answer a request")
            return b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
