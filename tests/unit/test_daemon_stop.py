"""The API server's stop: calls still running when the grace runs out are cancelled and
unwound before its loop closes (never destroyed later, mid-call, with gRPC's tracebacks on
stderr after the daemon said "stopped"), and a watch that comes during the grace is refused."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from daemonfakes import api_server, make_node, resolver_service, socket_dir
from fakehost import FakeHost

from ociresolve import DaemonUnavailable
from ociresolve.api import api_pb2, api_pb2_grpc
from ociresolve.api.client import DaemonClient
from ociresolve.daemon.server import ApiServer

UNWIND = 0.05


class Lingering(api_pb2_grpc.ResolverServicer):
    """Watch streams that never end by themselves, and take a moment to unwind when cancelled."""

    def __init__(self) -> None:
        self.opened = threading.Semaphore(0)
        self.unwound = 0

    def register(self, server: grpc.aio.Server) -> None:
        api_pb2_grpc.add_ResolverServicer_to_server(self, server)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def detach(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def Watch(  # type: ignore[override]
        self, request: api_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.WatchEvent]:
        try:
            yield api_pb2.WatchEvent(kind=api_pb2.WatchEvent.SYNCED)
            self.opened.release()
            await asyncio.sleep(3600)
        finally:
            self.unwound += 1
            await asyncio.sleep(UNWIND)


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[Path]:
    with socket_dir(tmp_path) as directory:
        yield directory


def read_all(client: DaemonClient, errors: list[BaseException]) -> threading.Thread:
    def read() -> None:
        try:
            for _ in client.watch():
                pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_calls_cut_at_the_grace_are_unwound_before_the_loop_closes(
    sockets: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = Lingering()
    server = ApiServer([service], str(sockets / "api.sock")).start()
    errors: list[BaseException] = []
    with DaemonClient(server.socket_path) as client:
        readers = [read_all(client, errors) for _ in range(3)]
        for _ in readers:
            assert service.opened.acquire(timeout=5.0)
        with caplog.at_level(logging.DEBUG):
            server.stop(0.1)
            gc.collect()
        for reader in readers:
            reader.join(5.0)
    assert service.unwound == 3
    assert len(errors) == 3 and all(isinstance(e, DaemonUnavailable) for e in errors)
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_a_watch_during_the_stop_is_refused(tmp_path: Path) -> None:
    node = make_node(FakeHost(tmp_path / "host"))
    with (
        node.resolver().start() as resolver,
        socket_dir(tmp_path) as directory,
    ):
        server = api_server(resolver, directory / "api.sock").start()
        try:
            stopping(server)
            errors: list[BaseException] = []
            with DaemonClient(server.socket_path) as client:
                read_all(client, errors).join(5.0)
            assert len(errors) == 1, "the watch was not refused"
            assert isinstance(errors[0], DaemonUnavailable) and "stopping" in str(errors[0])
            assert resolver_service(server).watchers == 0
        finally:
            server.stop(0.1)


def stopping(server: ApiServer) -> None:
    """What the server's stop does first, on its loop: the services detach."""
    done = threading.Event()

    def detach() -> None:
        resolver_service(server).detach()
        done.set()

    loop = server._loop
    assert loop is not None
    loop.call_soon_threadsafe(detach)
    assert done.wait(5.0)
