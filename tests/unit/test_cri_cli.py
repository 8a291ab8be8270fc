"""``ociresolve lookup`` with the CRI fallback: a fake host whose runtime roots know nothing and a
fake CRI runtime on the host's socket path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from contract import META_FIELDS
from fakecri import FakeCri, container_response, info_map
from fakehost import FakeHost, Pod, containerd_cgroup_file, containerd_spec, new_id

from ociresolve.cli import main

APP_PID = 4242
SOCKET = "/run/fake-cri/cri.sock"  # on the host


@dataclass
class Node:
    host: FakeHost
    pod: Pod
    app: str
    cri: FakeCri

    def lookup(self, *options: str) -> list[str]:
        return [
            "lookup",
            str(APP_PID),
            "--host-root",
            str(self.host.root),
            "--runtime-root",
            "/empty",
            *options,
        ]


@pytest.fixture
def node(host: FakeHost) -> Iterator[Node]:
    pod, app = Pod.new(), new_id()
    host.path("/empty").mkdir(parents=True)
    host.set_proc_cgroup(APP_PID, containerd_cgroup_file(app, pod.uid))
    socket = host.path(SOCKET)
    socket.parent.mkdir(parents=True)
    cri = FakeCri(str(socket)).start()
    document = {"pid": APP_PID, "runtimeSpec": containerd_spec(app, pod)}
    cri.containers[app] = container_response(app, name="app", info=info_map(document))
    try:
        yield Node(host=host, pod=pod, app=app, cri=cri)
    finally:
        cri.stop()


def test_lookup_over_cri_json_explain(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.lookup("--cri-socket", SOCKET, "--json", "--explain")) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert set(record) == META_FIELDS | {"pid", "source", "explain"}
    assert record["source"] == "cri"
    assert (record["pid"], record["container_id"], record["pod_uid"]) == (
        APP_PID,
        node.app,
        node.pod.uid,
    )
    assert (record["runtime"], record["container_name"]) == ("containerd", "app")
    steps = record["explain"]
    assert [step["step"] for step in steps] == ["cgroup", "index", "bundle", "cri"]
    assert steps[-1]["result"] == f"{node.cri.socket}: found"
    assert all(isinstance(step["ms"], int | float) for step in steps)
    assert node.cri.count("ContainerStatus") == 1


def test_lookup_over_cri_table(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.lookup("--cri-socket", SOCKET, "--explain")) == 0
    record, steps = capsys.readouterr().out.split("resolution:\n")
    rows = dict(line.split(None, 1) for line in record.splitlines())
    assert (rows["source"], rows["runtime"]) == ("cri", "containerd")
    assert rows["pod_name"] == node.pod.name
    assert rows["init_pid"] == "-"  # no bundle: the index has no record of it
    assert [line.split()[0] for line in steps.splitlines()] == ["cgroup", "index", "bundle", "cri"]
    assert steps.rstrip().endswith(f"{node.cri.socket}: found")


def test_no_cri_exits_1(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node.lookup("--cri-socket", SOCKET, "--no-cri", "--json", "--explain")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"pid {APP_PID} is in container {node.app[:12]}" in captured.err
    explain = json.loads(captured.err.splitlines()[-1])["explain"]
    assert explain[-1] == {"step": "cri", "result": "off", "ms": explain[-1]["ms"]}
    assert node.cri.total() == 0


def test_a_dead_socket_exits_1_promptly_with_a_clear_message(node: Node) -> None:
    """As a user runs it: a real process, its real stderr (the CRI's warning included)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ociresolve.cli", *node.lookup("--cri-socket", "/dead.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    dead = node.host.path("/dead.sock")
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"CRI {dead}: ContainerStatus: UNAVAILABLE: ")
    assert lines[-1] == (
        f"ociresolve: pid {APP_PID} is in container {node.app[:12]}, which no runtime root "
        f"knows as a Kubernetes container (cri: {dead}: no answer "
        "(ContainerStatus UNAVAILABLE; breaker closed))"
    )
    # The default deadline (0.25 s) and an interpreter start, with a generous margin.
    assert elapsed < 10
    assert node.cri.total() == 0
