"""Clients that misbehave on the API socket: they connect and never send, send garbage, open
calls and never finish them, or flood. None of them may stall the other clients, grow the
daemon's memory without bound, or crash it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from daemonfakes import (
    APP_PID,
    CONTINUATION,
    DATA,
    FOREIGN_PID,
    HEADERS,
    PREFACE,
    SETTINGS,
    Node,
    api_server,
    closed_by_peer,
    frame,
    grpc_headers,
    open_streams,
    random_bytes,
    resolver_service,
    serving,
    unix_connect,
)
from fakehost import new_id

from ociresolve import OciresolveError, Resolver
from ociresolve.api.client import DaemonClient
from ociresolve.daemon import server as server_module
from ociresolve.daemon.server import ApiServer
from ociresolve.errors import DaemonUnavailable
from ociresolve.model import Resolution

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

# A well-behaved client's deadline: every answer must come within it.
DEADLINE = 1.0


@pytest.fixture
def resolver(node: Node) -> Iterator[Resolver]:
    resolver = node.resolver().start()
    yield resolver
    resolver.close()


@contextlib.contextmanager
def held_open() -> Iterator[list[socket.socket]]:
    """A list for the hostile clients' connections: each is closed when the block ends, however
    it ends (also those added to it inside)."""
    clients: list[socket.socket] = []
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


def assert_answers(path: Path, node: Node, rounds: int = 5) -> None:
    """A well-behaved client gets every answer within its deadline."""
    with DaemonClient(str(path), timeout=DEADLINE) as client:
        for _ in range(rounds):
            started = time.monotonic()
            result = client.lookup_pid(APP_PID)
            assert result.status == "found"
            assert result.record is not None and result.record.meta.container_id == node.app
            assert len(client.containers()) == 3
            assert time.monotonic() - started < DEADLINE


def test_connections_that_never_send_stall_nobody(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path) as server:
        with held_open() as idle:
            idle += [unix_connect(path) for _ in range(200)]
            assert_answers(path, node)
            assert server.serving
        assert_answers(path, node)


def test_a_connection_that_never_sends_is_dropped_after_the_handshake_timeout(
    node: Node, resolver: Resolver, sockets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's handshake timeout is in force (shortened here: 5 s by default): a peer
    that connects and sends nothing, or only part of the HTTP/2 preface, is disconnected."""
    timeout_ms = 300
    options = tuple(
        (name, timeout_ms if name == "grpc.server_handshake_timeout_ms" else value)
        for name, value in server_module._OPTIONS
    )
    assert options != server_module._OPTIONS
    monkeypatch.setattr(server_module, "_OPTIONS", options)
    path = sockets / "api.sock"
    with serving(resolver, path):
        silent, partial = unix_connect(path), unix_connect(path)
        partial.sendall(PREFACE[:10])
        started = time.monotonic()
        assert closed_by_peer(silent, 3.0)
        assert closed_by_peer(partial, 3.0)
        assert time.monotonic() - started < 3.0
        assert_answers(path, node, rounds=1)


def assert_dropped(
    path: Path, server: ApiServer, node: Node, junk: Sequence[bytes], within: float
) -> None:
    """A connection per item of ``junk``, each sending it: the server closes each within
    ``within`` seconds, serves on, and a well-behaved client gets its answers."""
    clients = [unix_connect(path) for _ in junk]
    for client, data in zip(clients, junk, strict=True):
        client.sendall(data)
    for client in clients:
        assert closed_by_peer(client, within)
        client.close()
    assert server.serving
    assert_answers(path, node)


def test_garbage_is_dropped_at_once(node: Node, resolver: Resolver, sockets: Path) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path) as server:
        assert_dropped(path, server, node, [random_bytes(4096) for _ in range(20)], within=2.0)


def test_garbage_frames_after_a_valid_preface_are_dropped(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    path = sockets / "api.sock"
    junk = []
    for n in range(20):
        # Each is a connection error at its frame header, so the peer closes at once (raw random
        # bytes can spell a frame shorter than the maximum that a peer rightly waits for): a
        # CONTINUATION with no HEADERS before it, or a frame announcing 16 MB.
        if n % 2:
            bad = b"\xff\xff\xff" + bytes([DATA, 0]) + b"\x00\x00\x00\x01"
        else:
            bad = frame(CONTINUATION, 0, 1, random_bytes(64))
        junk.append(PREFACE + frame(SETTINGS, 0, 0) + bad + random_bytes(4096))
    with serving(resolver, path) as server:
        # 5 s: 20 at once, on a loaded 2-core CI machine
        assert_dropped(path, server, node, junk, within=5.0)


def test_a_few_calls_left_unfinished_stall_nobody(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path) as server:
        with held_open() as hanging:
            hanging += [open_streams(path, 16) for _ in range(4)]
            assert_answers(path, node)
        assert server.serving
        assert_answers(path, node)


def test_calls_left_unfinished_cannot_lock_out_other_clients(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    """A local client opens calls it never finishes (the request's headers, never its body),
    16 per connection (what the server accepts on a new connection; it refuses the rest), on
    as many connections as it likes. Each waits for its request forever; none may take the
    place of a well-behaved client."""
    path = sockets / "api.sock"
    with serving(resolver, path) as server:
        per_connection = 16
        connections = resolver_service(server).max_in_flight // per_connection + 2
        with held_open() as hanging:
            hanging += [open_streams(path, per_connection) for _ in range(connections)]
            until = time.monotonic() + 1.5  # while the server takes every stream in
            while time.monotonic() < until:
                assert_answers(path, node, rounds=1)
                time.sleep(0.05)


def test_a_flood_beyond_the_concurrency_cap_is_refused_not_queued(
    node: Node, resolver: Resolver, sockets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Misses are slow (a CRI call each, say); more calls in flight than the cap get
    RESOURCE_EXHAUSTED at once, none hangs, and the daemon serves on afterwards."""
    delay = 0.2

    def slow(container_id: str) -> Resolution | None:
        time.sleep(delay)
        return None

    monkeypatch.setattr(resolver, "resolve_container", slow)
    path = sockets / "api.sock"
    cap, callers = 4, 48
    with serving(resolver, path, max_in_flight=cap) as server:
        barrier = threading.Barrier(callers)

        def call(_: int) -> str:
            with DaemonClient(str(path), timeout=5.0) as client:
                barrier.wait()
                try:
                    return client.lookup_container(new_id()).status
                except DaemonUnavailable as exc:
                    return f"unavailable: {exc}"
                except OciresolveError as exc:
                    return "refused" if "RESOURCE_EXHAUSTED" in str(exc) else str(exc)

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(callers) as pool:
            outcomes = list(pool.map(call, range(callers)))
        elapsed = time.monotonic() - started
        # Some calls may also be refused by HTTP/2 itself (RST_STREAM REFUSED_STREAM), which
        # the client reports as UNAVAILABLE; none may fail otherwise.
        others = {o for o in outcomes if o not in ("not_found", "refused")}
        assert all("REFUSED_STREAM" in o or "error code 7" in o for o in others), others
        assert "not_found" in outcomes
        assert outcomes.count("not_found") <= callers // 2  # the rest were turned away
        assert elapsed < 3.0
        assert server.serving
        monkeypatch.undo()
        assert_answers(path, node)
        with DaemonClient(str(path)) as client:
            assert client.lookup_pid(FOREIGN_PID).status == "not_found"


def test_an_oversized_request_is_refused(node: Node, resolver: Resolver, sockets: Path) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path) as server, DaemonClient(str(path)) as client:
        keys = [("container_id", "x" * 2000) for _ in range(1000)]  # 2 MB
        with pytest.raises(OciresolveError, match="RESOURCE_EXHAUSTED") as caught:
            client.lookup_batch(keys)  # type: ignore[arg-type]
        assert not isinstance(caught.value, DaemonUnavailable)
        assert server.serving
        assert_answers(path, node)


def test_a_client_that_stops_reading_a_huge_answer_stalls_nobody(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    """A batch whose answer is large, asked on a raw connection that then never reads: the
    server's writes to it wait on flow control; other clients do not."""
    path = sockets / "api.sock"
    with serving(resolver, path) as server:
        from ociresolve.api import api_pb2

        request = api_pb2.LookupBatchRequest(
            lookups=[api_pb2.LookupRequest(container_id=node.app) for _ in range(4096)]
        ).SerializeToString()
        message = b"\x00" + len(request).to_bytes(4, "big") + request
        stalled = unix_connect(path)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = PREFACE + frame(SETTINGS, 0, 0)
        payload += frame(HEADERS, 0x4, 1, grpc_headers("/ociresolve.v1.Resolver/LookupBatch"))
        for offset in range(0, len(message), 16384):
            chunk = message[offset : offset + 16384]
            last = offset + 16384 >= len(message)
            payload += frame(0x0, 0x1 if last else 0x0, 1, chunk)
        stalled.sendall(payload)
        try:
            time.sleep(0.2)
            assert_answers(path, node)
            assert server.serving
        finally:
            stalled.close()


def test_the_daemon_survives_everything_at_once(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path) as server:
        with held_open() as clients:
            clients += [unix_connect(path) for _ in range(50)]
            for _ in range(10):
                garbage = unix_connect(path)
                garbage.sendall(random_bytes(1024))
                clients.append(garbage)
            clients += [open_streams(path, 8) for _ in range(4)]
            assert_answers(path, node)
        assert server.serving
        assert_answers(path, node)


def test_stopping_with_hostile_clients_connected_is_prompt(
    node: Node, resolver: Resolver, sockets: Path
) -> None:
    path = sockets / "api.sock"
    server = api_server(resolver, path).start()
    with held_open() as clients:
        clients += [unix_connect(path) for _ in range(20)]
        clients += [open_streams(path, 8) for _ in range(4)]
        started = time.monotonic()
        server.stop(0.5)
        assert time.monotonic() - started < 2.5
        assert not path.exists()
        assert not server.serving
