"""Clients that abuse the daemon do not starve the others.

The API: ``LookupBatch`` does its work (``/proc`` reads, bundles, the CRI) on a pool of its own,
never on the event loop, so a batch stuck in ``/proc`` leaves the loop answering everyone
else; and the batches at work at once are capped (RESOURCE_EXHAUSTED beyond). Timing is
``bench/abuse.py``'s business: here, only the structure.

The metrics and health server: clients that trickle a request byte by byte hold no thread
each, are cut at the request deadline (the whole request's, not one read's), and a scrape
still answers meanwhile."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from daemonfakes import APP_PID, Node, resolver_service, serving

from ociresolve import CgroupRef, OciresolveError, Resolver
from ociresolve.api.client import DaemonClient, LookupResult
from ociresolve.daemon import http as metrics_http
from ociresolve.daemon.http import HttpServer

HANG = 10.0  # only a guard against a hang
SLOW_PID = 31337


class StuckProc:
    """``Resolver.cgroup_of`` that blocks on ``SLOW_PID`` until released, as a ``/proc`` read
    stuck on a sick node would; and records the threads it ran on."""

    def __init__(self, resolver: Resolver) -> None:
        self.real = resolver.cgroup_of
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, pid: int) -> CgroupRef | None:
        self.threads.add(threading.current_thread().name)
        if pid == SLOW_PID:
            self.entered.release()
            self.release.wait(HANG)
            return None
        return self.real(pid)


@pytest.fixture
def resolver(node: Node) -> Iterator[Resolver]:
    resolver = node.resolver().start()
    yield resolver
    resolver.close()


@pytest.fixture
def stuck(resolver: Resolver, monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckProc]:
    fake = StuckProc(resolver)
    monkeypatch.setattr(resolver, "cgroup_of", fake)
    yield fake
    fake.release.set()


def batch(path: Path, pids: list[int]) -> list[LookupResult]:
    with DaemonClient(str(path), timeout=HANG) as client:
        return client.lookup_batch([("pid", pid) for pid in pids])


def test_a_batch_stuck_in_proc_leaves_the_loop_answering(
    node: Node, resolver: Resolver, stuck: StuckProc, sockets: Path
) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path) as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(batch, path, [APP_PID, SLOW_PID, APP_PID])
        assert stuck.entered.acquire(timeout=HANG)
        try:
            with DaemonClient(str(path), timeout=2.0) as client:
                assert client.lookup_cgroup_id(node.app_cgroup_id).status == "found"
                assert client.lookup_pid(APP_PID).status == "found"
        finally:
            stuck.release.set()
        results = pending.result(HANG)
        assert [r.status for r in results] == ["found", "host", "found"]
        assert resolver_service(server).lookups["index", "found"] >= 4  # counted as before
    batch_threads = stuck.threads - {"ociresolve-api"}
    assert batch_threads and all(t.startswith("ociresolve-batch") for t in batch_threads)


def test_batches_beyond_the_cap_are_refused(
    resolver: Resolver, stuck: StuckProc, sockets: Path
) -> None:
    path = sockets / "api.sock"
    with serving(resolver, path, max_batches=2), ThreadPoolExecutor(2) as pool:
        held: list[Future[list[LookupResult]]] = [
            pool.submit(batch, path, [SLOW_PID]) for _ in range(2)
        ]
        assert stuck.entered.acquire(timeout=HANG)
        deadline = time.monotonic() + HANG
        refused = None
        while refused is None and time.monotonic() < deadline:
            try:
                batch(path, [APP_PID])  # answered while the second one is not yet counted
            except OciresolveError as exc:
                refused = exc
        stuck.release.set()
        assert refused is not None and "batches" in str(refused)
        for one in held:
            assert [r.status for r in one.result(HANG)] == ["host"]
        assert [r.status for r in batch(path, [APP_PID])] == ["found"]


# -- the metrics and health server -------------------------------------------------------------


@pytest.fixture
def quick_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(metrics_http, "REQUEST_TIMEOUT", 1.0)
    return 1.0


def healthz(server: HttpServer) -> int:
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=HANG)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


def closed(client: socket.socket) -> bool:
    """Whether the server has closed ``client`` (it may have sent an error first)."""
    client.setblocking(False)
    try:
        while True:
            if not client.recv(4096):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_trickling_clients_hold_no_thread_and_are_cut_at_the_deadline(
    quick_deadline: float,
) -> None:
    server = HttpServer("127.0.0.1:0", healthy=lambda: True, ready=lambda: True, metrics=None)
    before = threading.active_count()
    server.start()
    host, port = server.address
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
    clients = [socket.create_connection((host, port), timeout=HANG) for _ in range(150)]
    try:
        started = time.monotonic()
        threads = 0
        for sent in range(len(request)):
            alive = [c for c in clients if not closed(c)]
            if not alive or time.monotonic() - started > quick_deadline * 3:
                break
            for client in alive:
                try:
                    client.setblocking(True)
                    client.sendall(request[sent : sent + 1])  # one byte every 50 ms
                except OSError:
                    pass
            threads = max(threads, threading.active_count() - before)
            if sent == 5:
                assert healthz(server) == 200  # a scrape is answered meanwhile
            time.sleep(0.05)
        assert threads <= 4, f"{threads} threads for {len(clients)} slow clients"
        assert all(closed(c) for c in clients), "trickling clients outlived the deadline"
        assert time.monotonic() - started < quick_deadline * 3
        assert healthz(server) == 200
    finally:
        for client in clients:
            client.close()
        server.stop()


def test_connections_beyond_the_cap_make_room_for_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the cap, the oldest connection still open goes: a probe is answered whatever
    holds the others."""
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 20)
    server = HttpServer("127.0.0.1:0", healthy=lambda: True, ready=lambda: True, metrics=None)
    server.start()
    host, port = server.address
    idle = [socket.create_connection((host, port), timeout=HANG) for _ in range(60)]
    try:
        for _ in range(5):
            assert healthz(server) == 200
        deadline = time.monotonic() + HANG
        while sum(not closed(c) for c in idle) > 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(not closed(c) for c in idle) <= 20
    finally:
        for client in idle:
            client.close()
        server.stop()
