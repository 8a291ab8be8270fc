"""The containerd socket tracer on the real containerd, every generation, with real BPF:
containers that connect to the containerd socket (mounted into them) are named by pod, namespace
and container from the live index alone; an exec'd process too; host processes are host; other
sockets are ignored. The tracer runs where containerd runs (``Containerd.command``)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    UNIXCONNECT,
    Containerd,
    ContainerSpec,
    PodFactory,
    TracerProcess,
)
from harness.image import build_unixconnect

pytestmark = [pytest.mark.e2e, pytest.mark.bpf]

IN_CONTAINER = "/run/containerd/containerd.sock"  # the socket dir, bind-mounted
OPENED = "containerd socket connection opened"


def rows(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines]


def is_connection(**fields: object) -> object:
    def match(line: str) -> bool:
        row = json.loads(line)
        return row.get("msg") == OPENED and all(row.get(k) == v for k, v in fields.items())

    return match


@pytest.fixture(scope="module")
def host_tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unixconnect helper under two host names: one reported, one excluded by comm."""
    work = tmp_path_factory.mktemp("hosttools")
    built = build_unixconnect(work / "unixconnect")
    tools = {}
    for name in ("hostconnect", "hostexcluded"):
        tools[name] = work / name
        shutil.copy(built, tools[name])
    return tools


@pytest.fixture
def tracer(containerd: Containerd) -> Iterator[TracerProcess]:
    process = TracerProcess(
        [
            "--socket",
            str(containerd.socket),
            "--socket",
            IN_CONTAINER,
            "--runtime-root",
            str(containerd.state_dir),
            "--no-cri",
            "--exclude-comm",
            "hostexcluded",
            "--output",
            "json",
            "--summary-interval",
            "0",
        ],
        enter=containerd.command,
    )
    with process:
        yield process


def test_a_container_that_connects_and_exits_at_once(
    containerd: Containerd, pod_factory: PodFactory, tracer: TracerProcess
) -> None:
    pod = pod_factory(
        "cri-v1alpha2-client-x8m9",
        [
            ContainerSpec(
                "client",
                [UNIXCONNECT, IN_CONTAINER],
                mounts=[containerd.socket_mount("/run/containerd")],
            )
        ],
        namespace="legacy",
    )
    container_id = pod.container_id("client")
    line = tracer.wait_for(is_connection(pod_name="cri-v1alpha2-client-x8m9"))
    status = containerd.cri().wait_container_exit(container_id)
    assert status.exit_code == 0
    row = json.loads(line)
    assert row["pod_namespace"] == "legacy"
    assert row["container"] == "client"
    assert row["container_id"] == container_id[:12]
    assert row["comm"] == "unixconnect"
    assert (row["family"], row["address"]) == ("unix", IN_CONTAINER)
    assert row["source"] == "index"  # the kernel's cgroup id, in the live index; CRI is off
    rest = rows(tracer.stop())
    summary = rest[-1]
    assert summary["msg"] == "containerd socket tracer stopped"
    assert summary["unresolved"] == 0 and summary["lost"] == 0
    assert summary["source_cri"] == 0


def test_an_exec_in_a_running_container_host_processes_and_other_sockets(
    containerd: Containerd,
    pod_factory: PodFactory,
    tracer: TracerProcess,
    host_tools: dict[str, Path],
    tmp_path: Path,
) -> None:
    pod = pod_factory(
        "operator-5d9f7",
        [
            ContainerSpec(
                "manager",
                ["sleep", "3600"],
                mounts=[containerd.socket_mount("/run/containerd")],
            )
        ],
        namespace="ops",
    )
    container_id = pod.container_id("manager")
    # kubectl exec: a second process, started later in the running container.
    subprocess.run(
        [
            containerd.ctr,
            "--address",
            str(containerd.socket),
            "-n",
            "k8s.io",
            "task",
            "exec",
            "--exec-id",
            "exec-unixconnect",
            container_id,
            UNIXCONNECT,
            IN_CONTAINER,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    row = json.loads(tracer.wait_for(is_connection(pod_name="operator-5d9f7")))
    assert (row["pod_namespace"], row["container"]) == ("ops", "manager")
    assert row["container_id"] == container_id[:12] and row["comm"] == "unixconnect"
    init_pid = containerd.cri().container_pid(container_id)
    assert row["pid"] != init_pid  # the exec'd process, not the container's first one

    # A connect to a socket that is not traced, then host processes on the traced one.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other_path = tmp_path / "unrelated.sock"
        other.bind(str(other_path))
        other.listen(4)
        run = [str(host_tools["hostconnect"]), str(other_path)]
        subprocess.run(run, check=True, capture_output=True, timeout=10)
    for tool in ("hostexcluded", "hostconnect"):
        run = [str(host_tools[tool]), str(containerd.socket)]
        subprocess.run(run, check=True, capture_output=True, timeout=10)
    host_row = json.loads(
        tracer.wait_for(is_connection(comm="hostconnect", address=str(containerd.socket)))
    )
    assert host_row["source"] == "host"
    assert host_row["pod_name"] is None and host_row["container"] is None
    # Events arrive in order: everything before the last host connect has been read by now.
    everything = rows(tracer.lines)
    assert not [r for r in everything if r.get("address") == str(other_path)]
    assert not [r for r in everything if r.get("comm") == "hostexcluded"]
    assert not [r for r in everything if r.get("comm") == "ctr"]  # excluded by default
