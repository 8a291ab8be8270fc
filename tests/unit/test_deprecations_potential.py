"""The cluster view of the deprecated-API clients: workloads in the client lines, the
containers that mount a runtime socket without being seen calling (``potential``), both through
the daemon's ``DeprecatedApiClients`` RPC (a real API server over a fake node) and
``deprecations --clients``, and both as Prometheus gauges, bounded."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonfakes import Node, free_port, make_node, socket_dir
from fakecri import socket_path as fake_socket_path
from fakehost import FakeHost, Pod, containerd_spec, new_id
from fakeintrospection import V1ALPHA2, FakeIntrospection
from prometheus_client.parser import text_string_to_metric_families
from test_deprecations_reporter import MS, T0, S, attributed_reporter, conn, dep, reporter
from tracerfakes import parse_logfmt

from ociresolve import Resolver
from ociresolve.api.client import DaemonClient
from ociresolve.cli import main
from ociresolve.daemon.deprecations_service import DeprecationsService
from ociresolve.daemon.metrics import MAX_CLIENT_SERIES, MAX_SOCKET_MOUNT_SERIES, Metrics
from ociresolve.daemon.server import ApiServer
from ociresolve.daemon.service import ResolverService
from ociresolve.deprecations.correlate import Attribution, Correlator, Identity
from ociresolve.deprecations.lines import client_fields, render
from ociresolve.deprecations.poller import Occurrence
from ociresolve.deprecations.potential import potential_clients, socket_mounts
from ociresolve.model import ContainerMeta, IndexedContainer

CONTAINERD_SOCK = "/run/containerd/containerd.sock"
DOCKER_SOCK = "/run/docker.sock"
COLLECTOR_ID = f"{4242:064x}"  # attributed_reporter()'s client


def socket_mount(source: str, destination: str) -> dict[str, object]:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", "rw"],
    }


def record(
    name: str,
    *,
    namespace: str = "monitoring",
    container: str = "agent",
    sockets: tuple[str, ...] = (CONTAINERD_SOCK,),
    container_id: str | None = None,
    kind: str = "container",
    removed: bool = False,
) -> IndexedContainer:
    meta = ContainerMeta(
        runtime="containerd",
        container_type=kind,  # type: ignore[arg-type]
        container_id=container_id or new_id(),
        sandbox_id=new_id(),
        pod_name=name,
        pod_namespace=namespace,
        container_name=container if kind == "container" else None,
    )
    return IndexedContainer(meta=meta, bundle="/b", sockets=sockets, removed=removed)


def attribution(
    pod: str | None, *, confidence: float, container_id: str | None = None, comm: str = "agent"
) -> Attribution:
    namespace, name = pod.split("/") if pod else (None, None)
    return Attribution(
        deprecation=V1ALPHA2,
        identity=Identity(namespace, name, "agent" if pod else None, comm),
        confidence=confidence,
        occurrences=3,
        considered=3,
        evidence=3.0,
        last_seen_ns=T0,
        container_id=container_id,
    )


# -- which containers are potential clients ----------------------------------------------------


def test_potential_clients_are_those_not_attributed() -> None:
    seen = record("seen-x2x4q")
    restarted = record("restarted-x2x4q")  # attributed under its previous container id
    weekly = record("weekly-28000000-x2x4q", namespace="batch")
    never = [
        record("web", sockets=()),
        record("gone", removed=True),
        record("pod", kind="sandbox"),
        own := record("ociresolve-x2x4q", namespace="ociresolve"),
    ]
    attributed = [
        attribution("monitoring/seen-x2x4q", confidence=0.9, container_id=seen.meta.container_id),
        attribution("monitoring/restarted-x2x4q", confidence=0.5, container_id=new_id()),
        attribution(None, confidence=0.4),
    ]
    asked: list[str | None] = []

    def workloads(container_id: str | None) -> str | None:
        asked.append(container_id)
        return "CronJob/weekly" if container_id == weekly.meta.container_id else None

    listed, omitted = potential_clients(
        [never[0], seen, weekly, restarted, *never[1:]],
        attributed,
        workloads=workloads,
        exclude={own.meta.container_id or ""},
    )
    assert [(p.pod_namespace, p.pod_name, p.workload, p.sockets) for p in listed] == [
        ("batch", "weekly-28000000-x2x4q", "CronJob/weekly", (CONTAINERD_SOCK,))
    ]
    assert omitted == 0
    assert asked == [weekly.meta.container_id]  # only for what is listed


def test_potential_clients_are_capped_and_ordered() -> None:
    records = [record(f"agent-{k:03d}") for k in range(30)]
    listed, omitted = potential_clients(reversed(records), [], limit=10)
    assert [p.pod_name for p in listed] == [f"agent-{k:03d}" for k in range(10)]
    assert omitted == 20
    assert [r.meta.pod_name for r in socket_mounts(records)][:2] == ["agent-000", "agent-001"]


# -- the client line ---------------------------------------------------------------------------


def test_the_workload_follows_the_container_in_a_client_line() -> None:
    row = attribution("monitoring/agent-x2x4q", confidence=0.91)
    fields = client_fields(row, time_ns=T0, node="vm", workload="DaemonSet/agent")
    keys = [key for key, value in fields if value is not None]
    assert keys[keys.index("container") + 1] == "workload"
    line = dict(parse_logfmt(render(fields)))
    assert line["workload"] == "DaemonSet/agent" and line["pod"] == "monitoring/agent-x2x4q"
    assert "workload" not in dict(parse_logfmt(render(client_fields(row, time_ns=T0, node="vm"))))
    assert json.loads(render(fields, "json"))["workload"] == "DaemonSet/agent"


# -- through the API and the command line ------------------------------------------------------


@pytest.fixture
def node(host: FakeHost) -> Node:
    made = make_node(host)
    # An agent that mounts containerd's socket directory and one that mounts Docker's socket
    # (the way kubelet hands a hostPath to containerd), neither seen calling; and the
    # attributed client of attributed_reporter(), which mounts containerd's socket too.
    for pod, container_id, mount in (
        (
            Pod.new("node-agent-x2x4q", "monitoring"),
            new_id(),
            ("/run/containerd", "/run/containerd"),
        ),
        (Pod.new("builder-0", "ci"), new_id(), ("/var/run/docker.sock", "/var/run/docker.sock")),
        (Pod.new("collector-5d9f", "legacy"), COLLECTOR_ID, ("/run/containerd", "/run/containerd")),
    ):
        spec = containerd_spec(container_id, pod, name="main")
        spec["mounts"].append(socket_mount(*mount))
        host.write(host.containerd_bundle(container_id), spec)
    return made


def workloads(container_id: str | None) -> str | None:
    """A stand-in for ``Workloads``: by the container's pod, as the index knows it."""
    return {
        "node-agent-x2x4q": "DaemonSet/node-agent",
        "collector-5d9f": "Deployment/collector",
    }.get(NAMES.get(container_id or "", ""))


NAMES: dict[str, str] = {}


@pytest.fixture
def api(node: Node, tmp_path: Path) -> Iterator[ApiServer]:
    with (
        contextlib.ExitStack() as stack,
        socket_dir(tmp_path) as directory,
        Resolver(host_root=str(node.host.root), runtime_roots=node.roots, cri=False) as resolver,
    ):
        NAMES.clear()
        NAMES.update(
            {r.meta.container_id or "": r.meta.pod_name or "" for r in resolver.containers()}
        )
        service = DeprecationsService(attributed_reporter(), resolver=resolver, workloads=workloads)
        server = ApiServer([ResolverService(resolver), service], str(directory / "api.sock"))
        server.start()
        stack.callback(server.stop, 1.0)
        yield server


def test_the_rpc_names_workloads_and_potential_clients(api: ApiServer) -> None:
    with DaemonClient(api.socket_path) as client:
        reply = client.deprecated_api_clients()
    assert [(c.pod_name, c.workload) for c in reply.clients] == [
        ("collector-5d9f", "Deployment/collector")
    ]
    # The collector is attributed: not a potential client, though it mounts the socket.
    assert [
        (p.pod_namespace, p.pod_name, p.container, p.workload, list(p.sockets))
        for p in reply.potential
    ] == [
        ("ci", "builder-0", "main", "", [DOCKER_SOCK]),
        ("monitoring", "node-agent-x2x4q", "main", "DaemonSet/node-agent", [CONTAINERD_SOCK]),
    ]
    assert all(len(p.container_id) == 64 for p in reply.potential)
    assert reply.potential_omitted == 0


def cli(capsys: pytest.CaptureFixture[str], api: ApiServer, *args: str) -> tuple[int, str, str]:
    code = main(["deprecations", "--clients", "--daemon-socket", api.socket_path, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_table_has_a_section_for_potential_clients(
    api: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, api)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["DEPRECATION", "POD", "CONTAINER", "WORKLOAD", "COMM"]
    assert lines[1].split()[1:4] == ["legacy/collector-5d9f", "main", "Deployment/collector"]
    assert lines[2:4] == ["", "Mounts a runtime socket, not seen calling:"]
    assert len(lines) == 7
    assert lines[4].split() == ["POD", "CONTAINER", "WORKLOAD", "SOCKETS"]
    assert lines[5].split() == ["ci/builder-0", "main", "-", DOCKER_SOCK]
    assert lines[6].split() == [
        "monitoring/node-agent-x2x4q",
        "main",
        "DaemonSet/node-agent",
        CONTAINERD_SOCK,
    ]


def test_json_says_which_is_which(api: ApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, api, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(r["status"], r["pod_name"], r["workload"]) for r in rows] == [
        ("attributed", "collector-5d9f", "Deployment/collector"),
        ("mounts-socket", "builder-0", None),
        ("mounts-socket", "node-agent-x2x4q", "DaemonSet/node-agent"),
    ]
    assert rows[2] == {
        "status": "mounts-socket",
        "pod_namespace": "monitoring",
        "pod_name": "node-agent-x2x4q",
        "container": "main",
        "workload": "DaemonSet/node-agent",
        "container_id": rows[2]["container_id"],
        "sockets": [CONTAINERD_SOCK],
    }


def test_a_service_without_a_resolver_lists_no_potential_client() -> None:
    # As the tests' api_server() builds it (and a daemon without an index would).
    reply = DeprecationsService(attributed_reporter()).answer()
    assert reply.reporting and len(reply.clients) == 1 and not reply.potential


# -- Prometheus --------------------------------------------------------------------------------


def scrape(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    body, _ = metrics.exposition()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(body.decode())
        if family.name.startswith(("ociresolve_deprecated", "ociresolve_runtime"))
    }


def test_the_gauges_of_a_node(node: Node) -> None:
    made = attributed_reporter()
    with Resolver(host_root=str(node.host.root), runtime_roots=node.roots, cri=False) as resolver:
        NAMES.clear()
        NAMES.update(
            {r.meta.container_id or "": r.meta.pod_name or "" for r in resolver.containers()}
        )
        metrics = Metrics()
        metrics.watch_deprecations(
            made.clients, lambda: socket_mounts(resolver.containers()), workloads
        )
        families = scrape(metrics)
    clients = families["ociresolve_deprecated_api_client_confidence"]
    assert clients[0] == (
        {
            "deprecation": V1ALPHA2,
            "namespace": "legacy",
            "pod": "collector-5d9f",
            "container": "main",
            "workload": "Deployment/collector",
        },
        pytest.approx(0.833, abs=0.001),
    )
    assert len(clients) == 1  # the host's crictl explained no occurrence: under the threshold
    mounts = families["ociresolve_runtime_socket_mounts"]
    assert sorted(
        (labels["pod"], labels["socket"], labels["workload"], value) for labels, value in mounts
    ) == [
        ("builder-0", DOCKER_SOCK, "", 1.0),
        ("collector-5d9f", CONTAINERD_SOCK, "Deployment/collector", 1.0),
        ("node-agent-x2x4q", CONTAINERD_SOCK, "DaemonSet/node-agent", 1.0),
    ]


def test_the_gauges_are_bounded() -> None:
    rows = [
        attribution(f"ns/pod-{k:03d}", confidence=0.9 - k * 0.005, container_id=f"{k:064x}")
        for k in range(120)
    ]
    # The same pod under two process names: one series, at its best confidence.
    rows.append(attribution("ns/pod-000", confidence=0.95, comm="other"))
    records = [record(f"pod-{k:03d}", sockets=(CONTAINERD_SOCK, DOCKER_SOCK)) for k in range(300)]
    metrics = Metrics()
    metrics.watch_deprecations(lambda: rows, lambda: records)
    families = scrape(metrics)
    clients = families["ociresolve_deprecated_api_client_confidence"]
    values = [value for _, value in clients]
    assert len(clients) == MAX_CLIENT_SERIES
    assert values == sorted(values, reverse=True) and values[0] == 0.95
    assert len({tuple(labels.items()) for labels, _ in clients}) == len(clients)
    assert min(values) >= 0.05
    assert len(families["ociresolve_runtime_socket_mounts"]) == MAX_SOCKET_MOUNT_SERIES


def test_no_client_under_the_threshold() -> None:
    metrics = Metrics()
    rows = [attribution("ns/low", confidence=0.049), attribution("ns/high", confidence=0.5)]
    metrics.watch_deprecations(lambda: rows, lambda: [])
    clients = scrape(metrics)["ociresolve_deprecated_api_client_confidence"]
    assert [labels["pod"] for labels, _ in clients] == ["high"]


def test_a_reporters_lines_carry_the_workload() -> None:
    made, stream = reporter(correlator=Correlator(since_ns=T0))
    made.workloads = lambda container_id: "StatefulSet/db" if container_id else None
    made.connected(conn("shop/db-0", T0, pid=10))
    made.handle(Occurrence(dep(V1ALPHA2, T0 + 3 * MS)))
    made.connected(conn(None, T0 + 10 * S, pid=1))
    made.handle(Occurrence(dep(V1ALPHA2, T0 + 10 * S + 3 * MS)))
    rows = [dict(parse_logfmt(line)) for line in stream.getvalue().splitlines()]
    clients = [row for row in rows if row.get("msg") == "deprecated API client"]
    assert [(row.get("pod"), row.get("workload")) for row in clients] == [
        ("shop/db-0", "StatefulSet/db"),
        (None, None),
    ]


# -- serve --report-deprecations, as a process --------------------------------------------------


def test_serve_lists_potential_clients_and_exposes_the_gauges(
    host: FakeHost, sockets: Path, tmp_path: Path
) -> None:
    """The daemon as the deprecations variant runs it (without the tracer here): the API and
    the metrics know the containers that mount a runtime socket from their bundles alone."""
    host.make_roots()
    pod, agent = Pod.new("node-agent-x2x4q", "monitoring"), new_id()
    spec = containerd_spec(agent, pod, name="agent")
    spec["mounts"].append(socket_mount("/var/run/containerd", "/run/containerd"))
    host.write(
        host.containerd_bundle(pod.sandbox_id), containerd_spec(pod.sandbox_id, pod, name=None)
    )
    host.write(host.containerd_bundle(agent), spec)
    introspection = FakeIntrospection(fake_socket_path(tmp_path, "containerd.sock")).start()
    port, api = free_port(), sockets / "api.sock"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ociresolve",
            "serve",
            "--report-deprecations",
            "--runtime-root",
            str(host.containerd),
            "--no-cri",
            "--containerd-socket",
            introspection.socket,
            "--socket",
            str(api),
            "--metrics-address",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NODE_NAME": "node-7"},
    )
    try:
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                if http_get(port, "/readyz")[0] == 200:
                    break
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()[1]
        with DaemonClient(str(api)) as client:
            reply = client.deprecated_api_clients()
        assert reply.reporting and not reply.correlating and not reply.clients
        assert [(p.pod_name, p.container, list(p.sockets)) for p in reply.potential] == [
            ("node-agent-x2x4q", "agent", [CONTAINERD_SOCK])
        ]
        status, body = http_get(port, "/metrics")
        assert status == 200
        assert (
            'ociresolve_runtime_socket_mounts{container="agent",namespace="monitoring",'
            f'pod="node-agent-x2x4q",socket="{CONTAINERD_SOCK}",workload=""}} 1.0'
        ) in body
        assert "# TYPE ociresolve_deprecated_api_client_confidence gauge" in body
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        introspection.stop()
    assert process.returncode == 0


def http_get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()
