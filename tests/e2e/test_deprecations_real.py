"""Finding the clients of the deprecated CRI v1alpha2 API, on the real containerd + runc.

The calls are real: containers of the ociresolve image (python3 and grpcio inside) call
``Version`` over the bind-mounted containerd socket, a new connection per call (or one kept
open), on CRI v1alpha2 or v1. containerd 1.6 and 1.7 serve v1alpha2; 2.x does not
(UNIMPLEMENTED). containerd >= 1.7 has the deprecation service, and 1.7 records each v1alpha2
call as the ``cri-api-v1alpha2`` warning's ``lastOccurrence``: the daemon (``serve
--report-deprecations --trace-connect``) reads that real record, traces the connections for real
(BPF) and must name the caller, and only it, with high confidence. What applies where comes from
the generation table (``harness.generations``): ``v1alpha2``, ``deprecation_service``,
``v1alpha2_deprecation``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from cri_callers import IN_CONTAINER, UNIMPLEMENTED, calls_of, wait
from deprecation_setup import (
    CLIENT,
    NEEDS_1_7,
    OPENED,
    RETRYING,
    CallerPods,
    assert_recorded,
    call_once,
    clients_json,
    clients_table,
    logged,
    new_occurrences,
    ociresolve,
    print_untraced,
    reporting_daemon,
    rfc3339_ns,
    wait_for_occurrences,
)
from harness import Containerd, DaemonProcess, PodFactory, TracerProcess
from harness.introspection import V1ALPHA2, parse_logfmt

from ociresolve import DaemonClient

pytestmark = [pytest.mark.e2e]

# -- a real v1alpha2 call, really traced -------------------------------------------------------


@pytest.mark.bpf
@pytest.mark.containerd(v1alpha2=True)
def test_a_real_v1alpha2_call_from_a_container_is_traced(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str
) -> None:
    tracer = TracerProcess(
        [
            "--socket",
            str(containerd.socket),
            "--socket",
            IN_CONTAINER,
            "--runtime-root",
            str(containerd.state_dir),
            "--no-cri",
            "--summary-interval",
            "0",
        ],
        enter=containerd.command,
    )
    with tracer:
        pod, call = call_once(
            containerd, pod_factory, ociresolve_image, "legacy", "cri-v1alpha2-client-x8m9"
        )
        # containerd answered on the v1alpha2 service, as v1alpha2.
        assert (call["runtime"], call["api"]) == ("containerd", "v1alpha2"), call
        line = tracer.wait_for(
            lambda text: (
                parse_logfmt(text).get("msg") == OPENED
                and parse_logfmt(text).get("pod") == "legacy/cri-v1alpha2-client-x8m9"
            )
        )
    row = parse_logfmt(line)
    assert row["container"] == "client"
    assert row["container_id"] == pod.container_id("client")[:12]
    assert (row["family"], row["address"]) == ("unix", IN_CONTAINER)
    assert row["source"] == "index"


# -- the real deprecation service -------------------------------------------------------------


@pytest.mark.containerd(deprecation_service=True)
def test_the_real_warnings_as_ctr_lists_them(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str
) -> None:
    """A CRI v1alpha2 call from a pod: a containerd that serves v1alpha2 and has the
    deprecation service (1.7) records it, its ``lastOccurrence`` the moment it got the call;
    one that no longer serves it (2.x) refuses the call (UNIMPLEMENTED) and records nothing.
    Either way ``ociresolve deprecations`` lists exactly what ``ctr deprecations list`` does."""
    generation = containerd.generation
    _, call = call_once(
        containerd, pod_factory, ociresolve_image, "legacy", "cri-v1alpha2-once-4k2j"
    )
    socket = str(containerd.socket)
    result = ociresolve(containerd, "deprecations", "--json", "--containerd-socket", socket)
    assert (result.returncode, result.stderr) == (0, ""), result
    ours = [json.loads(line) for line in result.stdout.splitlines()]
    listed = subprocess.run(
        [containerd.ctr, "--address", socket, "deprecations", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    theirs = json.loads(listed.stdout or "[]")  # ctr prints nothing at all for no warning
    assert sorted((w["id"], w["message"], w["last_occurrence"]) for w in ours) == sorted(
        (w["id"], w["message"], w.get("lastOccurrence")) for w in theirs
    ), (ours, theirs)

    by_id = {w["id"]: w for w in ours}
    if generation.v1alpha2_deprecation:
        assert call["api"] == "v1alpha2", call
        seen = by_id[V1ALPHA2]["last_occurrence"]
        assert call["before"] <= rfc3339_ns(seen) <= call["after"], (call, seen)
    else:
        assert call.get("error") == (None if generation.v1alpha2 else UNIMPLEMENTED), call
        assert V1ALPHA2 not in by_id, ours


# -- the correlation, end to end ---------------------------------------------------------------

CLIENT_POD = ("legacy", "cri-v1alpha2-client-7f9c")
PERIOD = 2.0  # the client's; the reporter polls every 0.5 s
CALLS = 12
# Innocent v1 callers on other schedules: (namespace, name, period, phase), phases against the
# client's first call. One calls 80 ms before every v1alpha2 call; another 50 ms after the
# client's 9th call and 50 ms before its 11th; the others come within 150-250 ms now and then.
INNOCENTS = (
    ("shop", "web-5d8f9", 0.7, 0.35),
    ("monitoring", "node-agent-q2x7", 1.3, 0.45),
    ("ops", "operator-6c2d", 3.1, 1.25),
    ("ops", "shadow-b4k1", PERIOD, -0.08),
)


@pytest.mark.bpf
@pytest.mark.containerd(v1alpha2_deprecation=True)
def test_the_client_of_v1alpha2_is_named_with_high_confidence(
    containerd: Containerd,
    pod_factory: PodFactory,
    ociresolve_image: str,
    socket_dir: Path,
) -> None:
    """containerd records each v1alpha2 call, keeping only the latest; the daemon polls that
    record and matches each new ``lastOccurrence`` against the connections it traced."""
    daemon = reporting_daemon(containerd, socket_dir)
    with daemon:
        start_ns = time.time_ns() + 6 * 1_000_000_000  # time for the pods to start
        callers = CallerPods(containerd, pod_factory, ociresolve_image, start_ns)
        client = callers.pod(*CLIENT_POD, "collector", api="v1alpha2", period=PERIOD, calls=CALLS)
        innocents = [
            callers.pod(
                namespace,
                name,
                api="v1",
                period=period,
                phase=phase,
                calls=int(CALLS * PERIOD / period) + 2,
            )
            for namespace, name, period, phase in INNOCENTS
        ]
        container_id = client.container_id("collector")
        calls = wait_for_occurrences(containerd, daemon, client, "collector", CALLS)
        rows = clients_json(containerd, daemon.socket)
        table = clients_table(containerd, daemon.socket)
        for pod in innocents:
            for call in calls_of(pod, "app"):
                assert call["api"] == "v1", (pod.name, call)
    occurrences = new_occurrences(daemon)
    clients = logged(daemon, CLIENT)
    traced = logged(daemon, OPENED)
    print_untraced(daemon)
    print(table.stdout)

    assert all(r["deprecation"] == V1ALPHA2 for r in occurrences)
    assert_recorded(occurrences, calls)
    pods = {r.get("pod") for r in traced}
    assert {f"{ns}/{name}" for ns, name, _, _ in INNOCENTS} <= pods, pods
    assert "/".join(CLIENT_POD) in pods

    # The lines: the client, after every occurrence, with a growing confidence.
    client_lines = [r for r in clients if r.get("pod") == "/".join(CLIENT_POD)]
    assert len(client_lines) == CALLS, clients
    assert client_lines[-1]["container"] == "collector"
    assert float(client_lines[-1]["confidence"]) >= 0.8, client_lines[-1]
    assert client_lines[-1]["occurrences"] == str(CALLS)
    others = [r for r in clients if r.get("pod") != "/".join(CLIENT_POD)]
    assert all(float(r["confidence"]) < 0.3 for r in others), others

    # The summary on demand: the client on top, the innocent ones low.
    top, *rest = rows
    assert (top["pod_namespace"], top["pod_name"], top["container"]) == (*CLIENT_POD, "collector")
    assert top["deprecation"] == V1ALPHA2
    assert top["confidence"] >= 0.8, rows
    assert top["container_id"] == container_id
    assert all(row["confidence"] < 0.3 for row in rest), rows
    assert table.returncode == 0 and "/".join(CLIENT_POD) in table.stdout.splitlines()[1]


# -- no deprecation service, runtime down ------------------------------------------------------


@pytest.mark.containerd(deprecation_service=False)
def test_a_containerd_without_the_deprecation_service_says_so(
    containerd: Containerd, tmp_path: Path
) -> None:
    result = ociresolve(containerd, "deprecations", "--containerd-socket", str(containerd.socket))
    assert result.returncode == 1, result
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"ociresolve: containerd {containerd.generation.series}.")
    assert NEEDS_1_7 in line and str(containerd.socket) in line

    missing = tmp_path / "gone" / "containerd.sock"
    result = ociresolve(containerd, "deprecations", "--containerd-socket", str(missing))
    assert (result.returncode, result.stdout) == (2, ""), result
    assert f"containerd {missing}: No such file or directory" in result.stderr


def test_the_runtime_down(containerd: Containerd) -> None:
    containerd.stop_daemon()
    try:
        result = ociresolve(
            containerd,
            "deprecations",
            "--containerd-socket",
            str(containerd.socket),
            "--timeout",
            "1",
        )
    finally:
        containerd.start()
    assert (result.returncode, result.stdout) == (2, ""), result
    assert str(containerd.socket) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.containerd(deprecation_service=False)
def test_serve_reports_deprecations_without_the_service(
    containerd: Containerd, pod_factory: PodFactory, socket_dir: Path
) -> None:
    """The daemon keeps serving lookups and says once that the runtime is too old."""
    daemon = DaemonProcess(
        socket_dir / "ociresolve.sock",
        [
            "--runtime-root",
            str(containerd.state_dir),
            "--cri-socket",
            str(containerd.socket),
            "--report-deprecations",
            "--containerd-socket",
            str(containerd.socket),
            "--deprecations-interval",
            "0.2",
        ],
        enter=containerd.command,
    )
    with daemon:
        warning = daemon.wait_for_log(lambda record: record.get("msg") == RETRYING)
        assert warning["level"] == "warning"
        assert NEEDS_1_7 in warning["error"] and warning["socket"] == str(containerd.socket)
        pod = pod_factory("web-3k9d", namespace="shop")
        pid = containerd.cri().container_pid(pod.container_id("main"))
        with DaemonClient(str(daemon.socket)) as client:
            wait(lambda: client.lookup_pid(pid).status == "found", "the daemon to find the pod")
            time.sleep(1.6)  # polls at 0, 0.2, 0.6, 1.4 s: one warning for all
            assert client.lookup_pid(pid).status == "found"
            reply = client.deprecated_api_clients()
            assert reply.reporting and not reply.correlating and not reply.clients
    retries = [r for r in daemon.logs if r.get("msg") == RETRYING]
    assert len(retries) == 1, daemon.logs
    assert not [r for r in daemon.logs if r.get("level") in ("error", "raw")], daemon.logs
    assert daemon.lines == []


# -- a client that keeps its connection open ---------------------------------------------------

PERSISTENT_POD = ("legacy", "cri-v1alpha2-watcher-3m8q")
PERSISTENT_CALLS = 11
# The client opens its channel 4 s before its first call. Innocent v1 callers, a connection per
# call, always between the client's calls (0.6 s or more away from any of them).
PER_CALL_INNOCENTS = (
    ("shop", "web-8h2k5", PERIOD, 1.0),
    ("monitoring", "node-agent-w7p3", 2 * PERIOD, 0.6),
    ("ops", "operator-t5n9", 2 * PERIOD, 2.6),
)
# A second client that keeps one connection open (calling v1), opened at another time: it is
# then a candidate for every occurrence by its lifetime too; what it sends, and when, tells
# the two apart.
PERSISTENT_INNOCENT: tuple[str, str, float] | None = (
    "monitoring",
    "kube-state-exporter-4j8s",
    -6.0,
)


@pytest.mark.bpf
@pytest.mark.containerd(v1alpha2_deprecation=True)
def test_a_client_keeping_one_connection_open_is_named(
    containerd: Containerd,
    pod_factory: PodFactory,
    ociresolve_image: str,
    socket_dir: Path,
) -> None:
    """Each call comes seconds after the client's only connect: only the connection's lifetime
    (its close not seen yet, the innocent ones closed) names it."""
    daemon = reporting_daemon(containerd, socket_dir)
    with daemon:
        start_ns = time.time_ns() + 8 * 1_000_000_000  # pods started, the channel open
        callers = CallerPods(containerd, pod_factory, ociresolve_image, start_ns)
        client = callers.pod(
            *PERSISTENT_POD,
            "watcher",
            api="v1alpha2",
            period=PERIOD,
            calls=PERSISTENT_CALLS,
            open_phase=-4.0,
        )
        innocents = [
            callers.pod(
                namespace,
                name,
                api="v1",
                period=period,
                phase=phase,
                calls=int(PERSISTENT_CALLS * PERIOD / period),
            )
            for namespace, name, period, phase in PER_CALL_INNOCENTS
        ]
        if PERSISTENT_INNOCENT is not None:
            other_namespace, other_name, open_phase = PERSISTENT_INNOCENT
            innocents.append(
                callers.pod(
                    other_namespace,
                    other_name,
                    api="v1",
                    period=PERIOD,
                    phase=PERIOD / 2,
                    calls=PERSISTENT_CALLS,
                    open_phase=open_phase,
                )
            )
        container_id = client.container_id("watcher")
        calls = wait_for_occurrences(containerd, daemon, client, "watcher", PERSISTENT_CALLS)
        rows = clients_json(containerd, daemon.socket)
        (opened,) = [c["opened"] for c in calls_of(client, "watcher") if "opened" in c]
        for pod in innocents:
            assert [c["api"] for c in calls_of(pod, "app") if "call" in c], pod.name
            assert all(c["api"] == "v1" for c in calls_of(pod, "app") if "call" in c)
    clients = logged(daemon, CLIENT)
    traced = logged(daemon, OPENED)
    print_untraced(daemon)

    # One connection, opened seconds before the first call.
    pod = "/".join(PERSISTENT_POD)
    assert len([r for r in traced if r.get("pod") == pod]) == 1, traced
    assert calls[0]["before"] - opened > 2_000_000_000
    assert {f"{ns}/{n}" for ns, n, _, _ in PER_CALL_INNOCENTS} <= {r.get("pod") for r in traced}

    assert_recorded(new_occurrences(daemon), calls)
    client_lines = [r for r in clients if r.get("pod") == pod]
    assert len(client_lines) == PERSISTENT_CALLS, clients
    assert client_lines[-1]["occurrences"] == str(PERSISTENT_CALLS)
    assert float(client_lines[-1]["confidence"]) >= 0.8, client_lines[-1]
    assert all(float(r["confidence"]) < 0.3 for r in clients if r.get("pod") != pod), clients

    top, *rest = rows
    assert (top["pod_namespace"], top["pod_name"], top["container"]) == (*PERSISTENT_POD, "watcher")
    assert top["confidence"] >= 0.8 and top["container_id"] == container_id, top
    assert all(row["confidence"] < 0.3 for row in rest), rest
