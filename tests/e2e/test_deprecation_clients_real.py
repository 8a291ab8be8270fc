"""Naming every deprecated-API client on a real containerd 1.7: node agents that keep one
connection open for their whole life, several at once, and a tenant that calls itself ``crictl``.

containerd 1.7's own deprecation service records each CRI v1alpha2 call (only the latest, with
its time); the daemon (``serve --report-deprecations --trace-connect``) traces the connections
to the socket and, per connection, when the client *sent* something (``sock:sock_send_length``),
and must name the pod whose connection sent the call just before each occurrence. A connection
that was open but silent is no candidate, so three persistent clients no longer split every
occurrence between them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cri_callers import IN_CONTAINER, calls_of, raw_caller, wait_for_calls
from deprecation_setup import (
    CLIENT,
    OPENED,
    CallerPods,
    assert_recorded,
    clients_json,
    clients_table,
    logged,
    new_occurrences,
    print_untraced,
    reporting_daemon,
    rfc3339_ns,
    wait_for_occurrences,
)
from harness import Containerd, ContainerSpec, Mount, PodFactory
from harness.introspection import V1ALPHA2

pytestmark = [pytest.mark.e2e, pytest.mark.bpf, pytest.mark.containerd(v1alpha2_deprecation=True)]

CALLS = 12
PERIOD = 2.0  # the v1alpha2 clients'; the daemon polls containerd every 0.5 s

# Labels as the controllers set them, so that the workload is named from labels and pod name.
DAEMONSET = {"controller-revision-hash": "6d5f8b7c9", "pod-template-generation": "3"}
DEPLOYMENT = {"pod-template-hash": "5f7b9c8d4"}
STATEFULSET = {
    "controller-revision-hash": "scanner-7c9d5f",
    "statefulset.kubernetes.io/pod-name": "scanner-0",
}


def job_labels(job: str) -> dict[str, str]:
    uid = "0f8e3c2a-5b7d-4e1f-9a6c-3d2b1e0f4a5c"
    return {
        "job-name": job,
        "batch.kubernetes.io/job-name": job,
        "controller-uid": uid,
        "batch.kubernetes.io/controller-uid": uid,
    }


def confidence_of(rows: list[dict[str, Any]], namespace: str, name: str) -> float:
    found = [
        float(str(r["confidence"]))
        for r in rows
        if (r.get("pod_namespace"), r.get("pod_name")) == (namespace, name)
        and r.get("status", "calling") != "mounts-socket"
    ]
    return max(found, default=0.0)


def test_three_persistent_connections_the_v1alpha2_one_stands_out(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str, socket_dir: Path
) -> None:
    """Three node agents each hold one connection, opened seconds before the first call: one
    calls v1alpha2 every 2 s, one v1 every 0.3 s (faster than the daemon polls), one v1 every
    3.1 s; two pods call v1 on a new connection each time; a CronJob's pod mounts the socket
    and never calls. After 12 occurrences the v1alpha2 agent's confidence is >= 0.9, every
    other pod's <= 0.1, the client is named with its workload, the silent pod is listed as
    mounting the socket, and the daemon itself is never a candidate."""
    minutes = time.time_ns() // 60_000_000_000 - 5  # a CronJob's scheduled time, in minutes
    job = f"weekly-report-{minutes}"
    daemon = reporting_daemon(containerd, socket_dir)
    with daemon:
        start_ns = time.time_ns() + 9 * 1_000_000_000  # pods started, channels open
        callers = CallerPods(containerd, pod_factory, ociresolve_image, start_ns)
        agent = callers.pod(
            "logging",
            "log-agent-x7k2p",
            "shipper",
            api="v1alpha2",
            period=PERIOD,
            calls=CALLS,
            open_phase=-4.0,
            labels=DAEMONSET,
        )
        # Two agents keeping one connection (opened 5 and 3 s before the first call), two pods
        # with a new connection per call (no open_phase).
        others = [
            callers.pod(
                namespace,
                name,
                api="v1",
                period=period,
                phase=phase,
                calls=int(CALLS * PERIOD / period),
                open_phase=open_phase,
                labels=labels,
            )
            for namespace, name, period, phase, open_phase, labels in (
                ("monitoring", "metrics-agent-5f7b9c8d4-q2x7z", 0.3, 0.15, -5.0, DEPLOYMENT),
                ("security", "scanner-0", 3.1, 1.25, -3.0, STATEFULSET),
                ("shop", "web-5d8f9", 0.7, 0.35, None, None),
                ("ops", "operator-6c2d", 1.3, 0.45, None, None),
            )
        ]
        silent = pod_factory(
            f"{job}-k8v2q",
            [
                ContainerSpec(
                    "report",
                    ["sleep", "3600"],
                    image=ociresolve_image,
                    # The socket file itself, as a pod mounts a node's socket: a file named
                    # as the runtime names its socket is known wherever it is.
                    mounts=[Mount(host_path=str(containerd.socket), container_path=IN_CONTAINER)],
                )
            ],
            namespace="backup",
            labels=job_labels(job),
        )
        calls = wait_for_occurrences(containerd, daemon, agent, "shipper", CALLS)
        rows = clients_json(containerd, daemon.socket)
        table = clients_table(containerd, daemon.socket)
        for pod in others:
            made = [c for c in calls_of(pod, "app") if "call" in c]
            assert made and all(c["api"] == "v1" for c in made), (pod.name, made)
        daemon_pid = daemon.pid
    print_untraced(daemon)
    print(table.stdout)
    assert_recorded(new_occurrences(daemon)[:CALLS], calls)

    # The agent: every occurrence is its, and its lines say so, with its workload.
    assert confidence_of(rows, "logging", "log-agent-x7k2p") >= 0.9, rows
    for pod in others:
        assert confidence_of(rows, pod.namespace, pod.name) <= 0.1, (pod.name, rows)
    mine = [r for r in logged(daemon, CLIENT) if r.get("pod") == "logging/log-agent-x7k2p"]
    assert mine and mine[-1]["container"] == "shipper" and mine[-1]["comm"], mine
    assert mine[-1]["workload"] == "DaemonSet/log-agent", mine[-1]
    assert float(mine[-1]["confidence"]) >= 0.9, mine[-1]
    (top,) = [r for r in rows if r.get("pod_name") == "log-agent-x7k2p"]
    assert top["workload"] == "DaemonSet/log-agent" and top["deprecation"] == V1ALPHA2, top
    assert "DaemonSet/log-agent" in table.stdout, table.stdout

    # The daemon's own connections (its polls of containerd, through the traced socket) are
    # never a client's.
    assert all(r.get("pid") != daemon_pid for r in rows), rows

    # The pod that mounts the socket and never called is listed, with its workload.
    potential = [r for r in rows if r.get("status") == "mounts-socket"]
    (weekly,) = [r for r in potential if r.get("pod_name") == silent.name]
    assert weekly["pod_namespace"] == "backup" and weekly["container"] == "report", weekly
    assert weekly["workload"] == "CronJob/weekly-report", weekly
    assert not [r for r in potential if r.get("pod_name") == "log-agent-x7k2p"], potential


def test_two_v1alpha2_clients_each_get_the_share_they_cause(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str, socket_dir: Path
) -> None:
    """Two persistent v1alpha2 clients on different periods, and a persistent v1 one: each
    v1alpha2 client's confidence is within 0.1 of the fraction of the occurrences it caused
    (containerd keeps only the latest call, so which one caused an occurrence is read from the
    clients' own call times)."""
    daemon = reporting_daemon(containerd, socket_dir)
    with daemon:
        start_ns = time.time_ns() + 9 * 1_000_000_000
        callers = CallerPods(containerd, pod_factory, ociresolve_image, start_ns)
        schedules = {"collector-6f4d8-b2n7x": (PERIOD, 0.0), "auditor-5c7f9-h4p2m": (3.0, 0.75)}
        pods = {
            name: callers.pod(
                "legacy",
                name,
                "client",
                api="v1alpha2",
                period=period,
                phase=phase,
                calls=int(CALLS * PERIOD / period),
                open_phase=-4.0,
            )
            for name, (period, phase) in schedules.items()
        }
        callers.pod(
            "monitoring",
            "exporter-7b9c4-z5k8d",
            api="v1",
            period=0.9,
            phase=0.4,
            calls=int(CALLS * PERIOD / 0.9),
            open_phase=-5.0,
        )
        made = {
            name: wait_for_calls(containerd, pod, "client", int(CALLS * PERIOD / period))
            for (name, pod), (period, _) in zip(pods.items(), schedules.values(), strict=True)
        }
        time.sleep(1.5)  # the last occurrence polled
        rows = clients_json(containerd, daemon.socket)
    occurrences = [rfc3339_ns(r["lastOccurrence"]) for r in new_occurrences(daemon)]
    caused = dict.fromkeys(pods, 0)
    for seen in occurrences:
        (name,) = [
            n for n, calls in made.items() if any(c["before"] <= seen <= c["after"] for c in calls)
        ]
        caused[name] += 1
    print(caused, rows)
    assert sum(caused.values()) == len(occurrences) >= CALLS
    for name, count in caused.items():
        fraction = count / len(occurrences)
        assert abs(confidence_of(rows, "legacy", name) - fraction) <= 0.1, (name, fraction, rows)
    assert confidence_of(rows, "monitoring", "exporter-7b9c4-z5k8d") <= 0.1, rows


# A host process (outside any container) whose main thread is named ``crictl``: it connects to
# the traced socket and closes, three times (a failed connect raises: exit status 1).
HOST_CRICTL = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"crictl", 0, 0, 0)
for _ in range(3):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(sys.argv[1])
    time.sleep(0.1)
"""


def test_a_tenant_named_crictl_is_reported_a_host_crictl_is_not(
    containerd: Containerd, pod_factory: PodFactory, ociresolve_image: str, socket_dir: Path
) -> None:
    """The default exclusions (kubelet, containerd, ctr, crictl, ...) are the node's own
    components: they apply to processes outside containers only. A process in a pod that names
    itself ``crictl`` and calls v1alpha2 is traced and named; a host ``crictl`` is not."""
    daemon = reporting_daemon(containerd, socket_dir)
    with daemon:
        start_ns = time.time_ns() + 6 * 1_000_000_000
        callers = CallerPods(containerd, pod_factory, ociresolve_image, start_ns)
        shell = callers.spec("shell", api="v1alpha2", period=PERIOD, calls=6)
        tenant = pod_factory(
            "debug-7x2k9", [raw_caller(shell, comm="crictl")], namespace="tenant-a"
        )
        host = subprocess.run(
            containerd.command([sys.executable, "-c", HOST_CRICTL, str(containerd.socket)]),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert host.returncode == 0, host.stderr
        calls = wait_for_occurrences(containerd, daemon, tenant, "shell", 6)
        rows = clients_json(containerd, daemon.socket)
    traced = logged(daemon, OPENED)
    print("\n".join(daemon.lines))
    assert_recorded(new_occurrences(daemon)[:6], calls)

    from_tenant = [r for r in traced if r.get("pod") == "tenant-a/debug-7x2k9"]
    assert len(from_tenant) == 6 and all(r["comm"] == "crictl" for r in from_tenant), traced
    assert all(r["address"] == IN_CONTAINER for r in from_tenant), from_tenant
    assert not [r for r in traced if r.get("comm") == "crictl" and "pod" not in r], traced
    assert confidence_of(rows, "tenant-a", "debug-7x2k9") >= 0.8, rows
    (row,) = [r for r in rows if r.get("pod_name") == "debug-7x2k9"]
    assert row["comm"] == "crictl" and row["container"] == "shell", row
