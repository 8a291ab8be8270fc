"""The API server: gRPC on a unix socket, on an event loop of its own thread, serving the
services it is given (``Service``: the resolver's always, the deprecation reporter's when it
runs).

The socket is created with mode ``mode`` (0600 by default: the API tells who runs what on the
node) and, when asked, handed to ``owner``. The path is claimed first, with a lock held until
the socket is removed (``SocketClaim``): a second daemon refuses to start and never touches the
first one's socket; a stale socket left by a killed daemon is replaced; one that still answers
is an error (two daemons would split the node's clients).

Hostile clients: a connection that never completes its HTTP/2 preface is dropped after
``HANDSHAKE_TIMEOUT_MS``; requests are capped in size; one connection holds at most
``MAX_STREAMS_PER_CONNECTION`` calls at once. The services cap their own work: the resolver's
refuses lookups beyond its ``max_in_flight`` that need the disk or the CRI with
RESOURCE_EXHAUSTED instead of queueing them, and lookups never wait for one another (see
``service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Final, Protocol

import grpc

from ociresolve.daemon.socketclaim import SocketClaim
from ociresolve.errors import OciresolveError

log = logging.getLogger(__name__)

DEFAULT_SOCKET: Final = "/run/ociresolve/ociresolve.sock"
MAX_REQUEST: Final = 1024 * 1024  # a full batch of 4096 container ids is ~300 KB
HANDSHAKE_TIMEOUT_MS: Final = 5000
MAX_STREAMS_PER_CONNECTION: Final = 16

_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_REQUEST),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # One connection holds at most this many calls at a time (a client's further calls wait
    # for a slot on its side): a client that leaves calls unfinished needs 64 connections to
    # fill the resolver service's MAX_IN_FLIGHT.
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ("grpc.max_connection_idle_ms", 10 * 60 * 1000),
    ("grpc.keepalive_time_ms", 60 * 1000),
    ("grpc.keepalive_timeout_ms", 10 * 1000),
)


class Service(Protocol):
    """What ``ApiServer`` serves: a servicer that adds itself to the gRPC server, and hears
    when serving starts and ends."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add its methods to ``server`` (before it starts)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The socket accepts: start what serving needs (on ``loop``, the server's)."""

    def detach(self) -> None:
        """The server is stopping (on its loop, before the calls in flight get their grace):
        end what would outlive it, such as streams."""

    def close(self) -> None:
        """The server has stopped: release what the service holds (threads)."""


class ApiServer:
    """Serves ``services`` on ``socket_path`` from ``start()`` to ``stop()``, once (``stop()``
    closes them). ``claim``: the path's claim when taken already (``serve`` takes it before
    its start-up); it is released on ``stop()``."""

    def __init__(
        self,
        services: Sequence[Service],
        socket_path: str = DEFAULT_SOCKET,
        *,
        mode: int = 0o600,
        owner: tuple[int, int] | None = None,
        claim: SocketClaim | None = None,
    ) -> None:
        self.services = tuple(services)
        self.socket_path = os.path.abspath(socket_path)
        self.claim = SocketClaim(self.socket_path) if claim is None else claim
        self.mode = mode
        self.owner = owner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._grace = 1.0

    def start(self) -> ApiServer:
        """Listen; returns once the socket accepts. Raises ``OciresolveError`` if it cannot."""
        self.claim.acquire()
        self._thread = threading.Thread(target=self._run, name="ociresolve-api", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self.claim.release()
            raise OciresolveError(f"cannot serve on {self.socket_path}: {self._error}")
        return self

    def stop(self, grace: float = 1.0) -> None:
        """End the watch streams, let the requests in flight finish within ``grace`` seconds,
        and remove the socket."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            self.claim.release()
            return
        self._grace = grace
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(grace + 2.0)
        for service in self.services:
            service.close()
        self.claim.remove_socket()
        self.claim.release()

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def _run(self) -> None:
        # The runner's close cancels and awaits what the server left running (calls cancelled
        # when the grace ran out, still unwinding): a task left pending on a closed loop is
        # destroyed later, mid-call, with gRPC's tracebacks on stderr.
        with asyncio.Runner() as runner:
            self._loop = runner.get_loop()
            try:
                runner.run(self._serve())
            except BaseException as exc:
                self._error = exc
                log.error("API server failed: %s", exc)
            finally:
                self._started.set()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        # No cap on calls here: gRPC would count a call whose request never comes, so clients
        # that leave calls unfinished could take every slot. The service caps the work instead.
        server = grpc.aio.server(options=_OPTIONS)
        for service in self.services:
            service.register(server)
        directory = os.path.dirname(self.socket_path)
        # Bound in a private directory, given its mode and owner there, then moved into place:
        # nobody can connect before the socket is private.
        private = tempfile.mkdtemp(prefix=".ociresolve-", dir=directory)
        bound = os.path.join(private, "api.sock")
        try:
            server.add_insecure_port(f"unix:{bound}")
            await server.start()
            os.chmod(bound, self.mode)
            if self.owner is not None:
                os.chown(bound, *self.owner)
            os.rename(bound, self.socket_path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(bound)
            os.rmdir(private)
        for service in self.services:
            service.attach(asyncio.get_running_loop())
        self._started.set()
        log.info("API listening on %s", self.socket_path)
        await self._stopping.wait()
        for service in self.services:
            service.detach()
        await server.stop(self._grace)
