"""``/metrics``, ``/healthz`` and ``/readyz``: a real HTTP server over a metrics registry that
watches a resolver of a fake node, the API service, a fake CRI and tracer counts."""

from __future__ import annotations

import http.client
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import (
    APP_PID,
    FOREIGN_PID,
    HOST_PID,
    Node,
    resolver_service,
    serving,
    socket_dir,
)
from fakecri import FakeCri, container_response, info_map, socket_path
from fakehost import Pod, containerd_spec, new_id

from ociresolve import OciresolveError, Resolver
from ociresolve.api.client import DaemonClient
from ociresolve.cri.client import GrpcCriClient
from ociresolve.daemon.http import HttpServer, parse_address
from ociresolve.daemon.metrics import Metrics
from ociresolve.tracer.counts import Counts

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

# Every family the issue names, as exposed (counters with their `_total`).
FAMILIES = (
    "ociresolve_containers",
    "ociresolve_lookups_total",
    "ociresolve_cri_requests_total",
    "ociresolve_cri_request_duration_seconds_bucket",
    "ociresolve_cri_breaker_state",
    "ociresolve_watcher_rescans_total",
    "ociresolve_inotify_overflows_total",
    "ociresolve_bundle_errors_total",
    "ociresolve_tracer_events_total",
    "ociresolve_tracer_resolved_total",
    "ociresolve_tracer_unresolved_total",
    "ociresolve_tracer_lost_total",
)


def get(server: HttpServer, path: str, timeout: float = 1.0) -> tuple[int, str, str]:
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[FakeCri]:
    server = FakeCri(socket_path(tmp_path)).start()
    yield server
    server.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def resolver(node: Node, cri: FakeCri, metrics: Metrics) -> Iterator[Resolver]:
    resolver = Resolver(
        host_root=str(node.host.root),
        runtime_roots=node.roots,
        cri_client=GrpcCriClient(cri.socket, timeout=0.5),
        cri_observer=metrics.observe_cri,
    ).start()
    yield resolver
    resolver.close()


class Health:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = False


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def http_server(metrics: Metrics, health: Health) -> Iterator[HttpServer]:
    server = HttpServer(
        "127.0.0.1:0",
        healthy=lambda: health.healthy,
        ready=lambda: health.ready,
        metrics=metrics.exposition,
    ).start()
    yield server
    server.stop()


def test_health_and_readiness(http_server: HttpServer, health: Health) -> None:
    assert get(http_server, "/healthz")[0] == 200
    assert get(http_server, "/readyz")[:1] == (503,)
    assert get(http_server, "/readyz")[2] == "not ready\n"
    health.ready = True
    assert get(http_server, "/readyz") == (200, "text/plain", "ok\n")
    assert get(http_server, "/readyz?verbose=1")[0] == 200
    health.healthy = False
    assert get(http_server, "/healthz")[0] == 503


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/", "/../metrics", "/favicon.ico"])
def test_other_paths_are_404(http_server: HttpServer, path: str) -> None:
    assert get(http_server, path)[0] == 404


def test_other_methods_are_refused(http_server: HttpServer) -> None:
    host, port = http_server.address
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    connection.request("POST", "/metrics", body=b"x")
    assert connection.getresponse().status == 501
    connection.close()


def test_no_metrics_endpoint_without_a_registry(health: Health) -> None:
    server = HttpServer("127.0.0.1:0", healthy=lambda: True, ready=lambda: True, metrics=None)
    server.start()
    try:
        assert get(server, "/metrics")[0] == 404
        assert get(server, "/healthz")[0] == 200
    finally:
        server.stop()


def test_every_family_of_the_issue_is_exposed(
    node: Node,
    cri: FakeCri,
    resolver: Resolver,
    metrics: Metrics,
    http_server: HttpServer,
    health: Health,
    tmp_path: Path,
) -> None:
    # One container only the CRI knows, so that CRI requests and their latency are counted.
    pod, cri_only = Pod.new("remote", "shop"), new_id()
    document = {
        "pid": 77,
        "sandboxID": pod.sandbox_id,
        "runtimeSpec": containerd_spec(cri_only, pod),
    }
    cri.containers[cri_only] = container_response(cri_only, name="app", info=info_map(document))
    counts = Counts(events=10, resolved=6, host=3, unresolved=1, lost=2)
    counts.sources.update(index=5, cri=1)
    with socket_dir(tmp_path) as directory, serving(resolver, directory / "api.sock") as api:
        metrics.watch(resolver, resolver_service(api), lambda: counts, lambda: health.ready)
        with DaemonClient(api.socket_path) as client:
            assert client.lookup_pid(APP_PID).status == "found"
            assert client.lookup_pid(HOST_PID).status == "host"
            assert client.lookup_pid(FOREIGN_PID).status == "not_found"
            assert client.lookup_container(cri_only).source == "cri"
        watcher = resolver.watcher
        assert watcher is not None
        watcher.rescans, watcher.overflows, watcher.bundle_errors = 2, 1, 3
        status, content_type, text = get(http_server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    names = {name for name in re.findall(r"^([a-z_]+)", text, re.MULTILINE)}
    for family in FAMILIES:
        assert family in names, family
    assert all(name.startswith("ociresolve_") for name in names), sorted(names)
    values = samples(text)
    assert values['ociresolve_containers{runtime="containerd",type="container"}'] == 1
    assert values['ociresolve_containers{runtime="containerd",type="sandbox"}'] == 1
    assert values['ociresolve_containers{runtime="cri-o",type="container"}'] == 1
    assert values['ociresolve_lookups_total{result="found",source="index"}'] == 1
    assert values['ociresolve_lookups_total{result="host",source="none"}'] == 1
    assert values['ociresolve_lookups_total{result="not_found",source="none"}'] == 1
    assert values['ociresolve_lookups_total{result="found",source="cri"}'] == 1
    assert values['ociresolve_cri_requests_total{code="ok",method="ContainerStatus"}'] >= 1
    assert values['ociresolve_cri_request_duration_seconds_count{method="ContainerStatus"}'] >= 1
    assert values['ociresolve_cri_breaker_state{state="closed"}'] == 1
    assert values['ociresolve_cri_breaker_state{state="open"}'] == 0
    assert values["ociresolve_watcher_rescans_total"] == 2
    assert values["ociresolve_inotify_overflows_total"] == 1
    assert values["ociresolve_bundle_errors_total"] == 3
    assert values["ociresolve_tracer_events_total"] == 10
    assert values['ociresolve_tracer_resolved_total{source="index"}'] == 5
    assert values['ociresolve_tracer_resolved_total{source="cri"}'] == 1
    assert values["ociresolve_tracer_host_total"] == 3
    assert values["ociresolve_tracer_unresolved_total"] == 1
    assert values["ociresolve_tracer_lost_total"] == 2
    assert values["ociresolve_ready"] == 0
    assert values["ociresolve_watch_streams"] == 0
    assert values["ociresolve_watch_overflows_total"] == 0
    health.ready = True
    assert samples(get(http_server, "/metrics")[2])["ociresolve_ready"] == 1


def test_no_tracer_series_without_a_tracer(
    resolver: Resolver, metrics: Metrics, http_server: HttpServer
) -> None:
    metrics.watch(resolver, None, lambda: None)
    text = get(http_server, "/metrics")[2]
    assert "ociresolve_tracer_" not in text
    assert "ociresolve_lookups" not in text
    assert "ociresolve_containers{" in text
    assert "ociresolve_cri_requests" in text  # the family, without series before a CRI call


def test_two_registries_do_not_collide(resolver: Resolver) -> None:
    """Nothing registers globally: two daemons' registries (two tests) coexist."""
    first, second = Metrics(), Metrics()
    first.watch(resolver, None)
    second.watch(resolver, None)
    assert b"ociresolve_containers" in first.exposition()[0]
    assert b"ociresolve_containers" in second.exposition()[0]


def test_a_scrape_sees_the_index_change(
    node: Node, resolver: Resolver, metrics: Metrics, http_server: HttpServer
) -> None:
    metrics.watch(resolver, None)
    key = 'ociresolve_containers{runtime="containerd",type="container"}'
    assert samples(get(http_server, "/metrics")[2])[key] == 1
    late = new_id()
    node.host.write(node.host.containerd_bundle(late), containerd_spec(late, node.pod, name="b"))
    assert resolver.lookup_container(late) is not None
    assert samples(get(http_server, "/metrics")[2])[key] == 2


def connect_quietly(server: HttpServer, count: int, pause: float) -> list[socket.socket]:
    """``count`` connections that send nothing, each connect started ``pause`` s after the
    last (without waiting for it to complete); returns once every one is established."""
    host, port = server.address
    clients: list[socket.socket] = []
    for _ in range(count):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        client.connect_ex((host, port))
        clients.append(client)
        time.sleep(pause)
    deadline = time.monotonic() + 10.0
    for client in clients:
        _, writable, _ = select.select([], [client], [], max(0.0, deadline - time.monotonic()))
        assert writable, "a connection was never accepted"
    return clients


def test_clients_that_never_send_do_not_block_health_checks(http_server: HttpServer) -> None:
    idle = connect_quietly(http_server, 40, 0.01)
    host, port = http_server.address
    partial = socket.create_connection((host, port), timeout=2.0)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    try:
        for _ in range(5):
            started = time.monotonic()
            assert get(http_server, "/healthz")[0] == 200
            assert time.monotonic() - started < 1.0
    finally:
        for client in [*idle, partial]:
            client.close()


def test_a_burst_of_connections_does_not_delay_health_checks(http_server: HttpServer) -> None:
    """A local client opens 64 connections at once, three times. The kubelet's probe, right
    after, must still be answered within its default timeout (1 s): the listen backlog must
    hold such a burst, or the probe's SYN is dropped and retried a second later."""
    host, port = http_server.address
    burst: list[socket.socket] = []
    try:
        for _ in range(3):
            for _ in range(64):
                client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                client.setblocking(False)
                client.connect_ex((host, port))
                burst.append(client)
            started = time.monotonic()
            assert get(http_server, "/healthz", timeout=5.0)[0] == 200
            assert time.monotonic() - started < 1.0
    finally:
        for client in burst:
            client.close()


def test_garbage_gets_an_error_and_the_server_goes_on(http_server: HttpServer) -> None:
    host, port = http_server.address
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET " + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, port), timeout=2.0) as client:
            client.sendall(junk)
            client.recv(100)  # an error page, or nothing
    assert get(http_server, "/healthz")[0] == 200


def test_concurrent_scrapes(resolver: Resolver, metrics: Metrics, http_server: HttpServer) -> None:
    metrics.watch(resolver, None)
    codes: list[int] = []

    def scrape() -> None:
        for _ in range(10):
            codes.append(get(http_server, "/metrics", timeout=5.0)[0])

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * 80


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        (":9090", ("0.0.0.0", 9090)),
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9090", "host:", "host:port", "host:65536", "host:-1", ""])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(OciresolveError, match="expected HOST:PORT"):
        parse_address(address)


def test_a_port_in_use_is_an_error(http_server: HttpServer) -> None:
    host, port = http_server.address
    with pytest.raises(OciresolveError, match=f"{host}:{port}"):
        HttpServer(f"{host}:{port}", healthy=lambda: True, ready=lambda: True, metrics=None)
