"""The API server: gRPC on a unix socket, on an event loop of its own thread.

The socket is created with mode ``mode`` (0600 by default: the API tells who runs what on the
node) and, when asked, handed to ``owner``. A stale socket left by a killed daemon is replaced;
one that still answers is an error (two daemons would split the node's clients).

Hostile clients: a connection that never completes its HTTP/2 preface is dropped after
``HANDSHAKE_TIMEOUT_MS``; requests are capped in size; one connection holds at most
``MAX_STREAMS_PER_CONNECTION`` calls at once; more than ``max_concurrent_rpcs`` lookups that
need the disk or the CRI in flight are refused with RESOURCE_EXHAUSTED instead of queued, and
lookups never wait for one another (see ``service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import grpc

from ociresolve.api import api_pb2_grpc
from ociresolve.daemon.service import ResolverService
from ociresolve.errors import OciresolveError
from ociresolve.resolver import Resolver

log = logging.getLogger(__name__)

DEFAULT_SOCKET: Final = "/run/ociresolve/ociresolve.sock"
MAX_CONCURRENT_RPCS: Final = 1024
MAX_REQUEST: Final = 1024 * 1024  # a full batch of 4096 container ids is ~300 KB
HANDSHAKE_TIMEOUT_MS: Final = 5000
MISS_WORKERS: Final = 4
MAX_STREAMS_PER_CONNECTION: Final = 16

_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_REQUEST),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # One connection holds at most this many calls at a time (a client's further calls wait
    # for a slot on its side): a client that leaves calls unfinished needs 64 connections to
    # fill the server's MAX_CONCURRENT_RPCS.
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ("grpc.max_connection_idle_ms", 10 * 60 * 1000),
    ("grpc.keepalive_time_ms", 60 * 1000),
    ("grpc.keepalive_timeout_ms", 10 * 1000),
)


class ApiServer:
    """Serves ``resolver`` on ``socket_path`` from ``start()`` to ``stop()``."""

    def __init__(
        self,
        resolver: Resolver,
        socket_path: str = DEFAULT_SOCKET,
        *,
        mode: int = 0o600,
        owner: tuple[int, int] | None = None,
        max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    ) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.mode = mode
        self.owner = owner
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self._executor = ThreadPoolExecutor(MISS_WORKERS, thread_name_prefix="ociresolve-miss")
        self.service = ResolverService(resolver, self._executor, max_in_flight=max_concurrent_rpcs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._grace = 1.0

    def start(self) -> ApiServer:
        """Listen; returns once the socket accepts. Raises ``OciresolveError`` if it cannot."""
        _clear_stale_socket(self.socket_path)
        self._thread = threading.Thread(target=self._run, name="ociresolve-api", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise OciresolveError(f"cannot serve on {self.socket_path}: {self._error}")
        return self

    def stop(self, grace: float = 1.0) -> None:
        """End the watch streams, let the requests in flight finish within ``grace`` seconds,
        and remove the socket."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        self._grace = grace
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(grace + 2.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._error is None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            log.error("API server failed: %s", exc)
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        # No cap on calls here: gRPC would count a call whose request never comes, so clients
        # that leave calls unfinished could take every slot. The service caps the work instead.
        server = grpc.aio.server(options=_OPTIONS)
        api_pb2_grpc.add_ResolverServicer_to_server(self.service, server)
        directory = os.path.dirname(self.socket_path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
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
        self.service.attach(asyncio.get_running_loop())
        self._started.set()
        log.info("API listening on %s", self.socket_path)
        await self._stopping.wait()
        self.service.close_streams()
        await server.stop(self._grace)


def _clear_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:  # a file where a directory should be, no permission
        raise OciresolveError(f"cannot serve on {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise OciresolveError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise OciresolveError(f"{path}: {exc.strerror}") from exc
        os.unlink(path)  # left by a daemon that is gone
        return
    finally:
        probe.close()
    raise OciresolveError(f"another daemon is serving on {path}")
