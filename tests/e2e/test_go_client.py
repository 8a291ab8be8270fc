"""The Go example client (``examples/go``) against a real daemon on a real containerd + runc.

The client is generated from ``ociresolve/api/api.proto`` and built by ``examples/go/build``
with Debian's Go toolchain and packaged gRPC and protobuf libraries, once per module. It runs
on one containerd generation: what it tests is the API as another language sees it, the same
on every runtime. Without the Go packages it skips, saying which are missing (a failure under
``OCIRESOLVE_REQUIRE_E2E=1``); the tests of its errors need neither root nor containerd.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Containerd, ContainerSpec, DaemonProcess, Pod, PodFactory
from harness.generations import DEFAULT

from ociresolve import DaemonClient

pytestmark = pytest.mark.containerd(id=DEFAULT.id)  # the API is the same on every runtime

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "examples" / "go" / "build"
TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
GOCODE = Path("/usr/share/gocode/src")
LIBRARIES = ("google.golang.org/grpc", "google.golang.org/protobuf", "github.com/golang/protobuf")
BUILD_TIMEOUT = 300.0  # a cold build of grpc-go on 2 cores takes about 30 s
RUN_TIMEOUT = 30.0
TIMEOUT = 10.0  # seconds any one expected state may take to show; never reached when all is well
SLEEP = ["sleep", "3600"]


def go_requirements() -> str | None:
    """Why the Go client cannot be built here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    missing += [f"{GOCODE}/{lib}" for lib in LIBRARIES if not (GOCODE / lib).is_dir()]
    if missing:
        return f"missing {', '.join(missing)}: run scripts/install-system as root"
    return None


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("OCIRESOLVE_REQUIRE_E2E") == "1":
        pytest.fail(f"go: {reason} (OCIRESOLVE_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(f"go: {reason}")


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/go/build``'s binary, built once for the module."""
    _require(go_requirements())
    binary = tmp_path_factory.mktemp("go") / "ociresolve-go"
    built = subprocess.run(
        [str(BUILD), str(binary)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert built.returncode == 0, f"examples/go/build failed:\n{built.stdout}{built.stderr}"
    assert built.stdout == built.stderr == "", "the build is quiet when it succeeds"
    return binary


def run_go(
    binary: Path, socket: Path, *args: str, containerd: Containerd | None = None
) -> subprocess.CompletedProcess[str]:
    """``ociresolve-go -socket SOCKET ARGS``, where containerd runs when one is given."""
    argv = [str(binary), "-socket", str(socket), *args]
    return subprocess.run(
        containerd.command(argv) if containerd is not None else argv,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = stdout.splitlines()
    assert all(line.isascii() and line.isprintable() for line in lines), lines
    return [json.loads(line) for line in lines]


def indexed(daemon: DaemonProcess, pod: Pod) -> None:
    """Wait until the daemon knows every member of the pod with its cgroup id."""
    with DaemonClient(str(daemon.socket)) as client:
        for cid in (pod.sandbox_id, *pod.containers.values()):
            deadline = time.monotonic() + TIMEOUT
            while not ((r := client.lookup_container(cid).record) and r.cgroup_id):
                if time.monotonic() > deadline:
                    pytest.fail(f"{cid}: not indexed with its cgroup id within {TIMEOUT}s")
                time.sleep(0.01)


# -- lookup ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_lookup_by_pid_cgroup_id_and_container_id(
    go_client: Path, containerd: Containerd, pod_factory: PodFactory, daemon: DaemonProcess
) -> None:
    """The three keys of ``Lookup`` name the same container, as the daemon's own Python client
    sees it; a host process is exit 1, a process that does not exist exit 2."""
    pod = pod_factory("go-client-4f1a", [ContainerSpec("app", SLEEP)], namespace="golang")
    indexed(daemon, pod)
    container_id = pod.container_id("app")
    with DaemonClient(str(daemon.socket)) as client:
        record = client.lookup_container(container_id).record
    assert record is not None and record.pid is not None and record.cgroup_id is not None

    def go(*args: str) -> subprocess.CompletedProcess[str]:
        return run_go(go_client, daemon.socket, *args, containerd=containerd)

    answers: dict[str, dict[str, Any]] = {}
    for key, value in (
        ("-pid", str(record.pid)),
        ("-cgroup-id", str(record.cgroup_id)),
        ("-container-id", container_id),
    ):
        done = go("lookup", key, value)
        assert done.returncode == 0, (key, done.stdout, done.stderr)
        assert done.stderr == "", key
        [answer] = json_lines(done.stdout)
        answers[key] = answer
        assert answer["status"] == "FOUND", answer
        assert answer["source"] == "index", answer
    container = answers["-pid"]["container"]
    assert container == {
        "runtime": "containerd",
        "container_type": "container",
        "container_id": container_id,
        "sandbox_id": pod.sandbox_id,
        "pod_name": pod.name,
        "pod_namespace": pod.namespace,
        "pod_uid": pod.uid,
        "container_name": "app",
        "image": record.meta.image,
        "pid": record.pid,
        "cgroup_id": str(record.cgroup_id),  # proto3 JSON: 64-bit integers are strings
        "bundle": record.bundle,
        "cgroups_path": record.cgroups_path,
    }
    assert answers["-cgroup-id"]["container"] == container
    assert answers["-container-id"]["container"] == container

    # -explain: the daemon's steps, with their timings.
    done = go("lookup", "-pid", str(record.pid), "-explain")
    assert done.returncode == 0, done.stderr
    steps = json_lines(done.stdout)[0]["steps"]
    assert steps[0]["step"] == "cgroup" and "seconds" in steps[0], steps

    host = go("lookup", "-pid", str(os.getpid()))
    assert host.returncode == 1, (host.stdout, host.stderr)
    assert json_lines(host.stdout) == [{"status": "HOST"}]
    assert "a host process, in no container" in host.stderr

    gone = go("lookup", "-pid", str(unused_pid()))
    assert gone.returncode == 2, (gone.stdout, gone.stderr)
    assert json_lines(gone.stdout)[0]["status"] == "NO_SUCH_PROCESS"
    assert "no such process" in gone.stderr

    refused = go("lookup", "-container-id", "app")
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    assert "InvalidArgument" in refused.stderr, refused.stderr


# -- watch -------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_watch_prints_the_current_set_then_synced_then_changes(
    go_client: Path, containerd: Containerd, pod_factory: PodFactory, daemon: DaemonProcess
) -> None:
    """``watch -n N``: ``ADDED`` for every container the daemon knows, one ``SYNCED``, then the
    changes: a pod created meanwhile shows as its sandbox's ``ADDED``. The watch ends after N
    events, with exit 0."""
    first = pod_factory("go-watch-7e2c", [ContainerSpec("app", SLEEP)], namespace="golang")
    indexed(daemon, first)
    with DaemonClient(str(daemon.socket)) as client:
        known = {r.meta.container_id for r in client.containers()}
    assert {first.sandbox_id, first.container_id("app")} <= known

    # The current set, SYNCED, and one change.
    argv = [str(go_client), "-socket", str(daemon.socket), "watch"]
    argv += ["-n", str(len(known) + 2), "-for", f"{RUN_TIMEOUT}s"]
    with subprocess.Popen(
        containerd.command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watching:
        assert watching.stdout is not None and watching.stderr is not None
        lines = []
        for line in watching.stdout:
            lines.append(line)
            if json.loads(line)["kind"] == "SYNCED":
                break
        second = pod_factory("go-watch-9b3d", [ContainerSpec("app", SLEEP)], namespace="golang")
        lines += watching.stdout.readlines()
        stderr = watching.stderr.read()
        returncode = watching.wait(TIMEOUT)
    assert returncode == 0, stderr
    assert stderr == ""
    events = json_lines("".join(lines))
    kinds = [e["kind"] for e in events]
    assert kinds == ["ADDED"] * len(known) + ["SYNCED", "ADDED"], kinds
    current = {e["container"]["container_id"]: e["container"] for e in events[: len(known)]}
    assert set(current) == known
    app = current[first.container_id("app")]
    assert (app["pod_name"], app["pod_namespace"], app["container_name"]) == (
        first.name,
        "golang",
        "app",
    )
    added = events[-1]["container"]
    assert (added["container_id"], added["container_type"]) == (second.sandbox_id, "sandbox")
    assert added["pod_name"] == second.name


# -- errors ------------------------------------------------------------------------------------


def test_a_dead_socket_is_exit_2_with_a_clear_message(go_client: Path, socket_dir: Path) -> None:
    """No daemon on the socket, for both commands: no file there, and a socket file left by a
    daemon that died (nobody listening). Exit 2, nothing on stdout, and stderr names the
    socket and why."""
    missing = socket_dir / "missing.sock"
    stale = socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(stale))  # never listens: connect() is refused, as after a crash
    for path, why in ((missing, "no such file or directory"), (stale, "connection refused")):
        for command in (["lookup", "-pid", "1"], ["watch", "-n", "1"]):
            done = run_go(go_client, path, *command)
            assert done.returncode == 2, (path, command, done.stdout, done.stderr)
            assert done.stdout == ""
            assert done.stderr.startswith(f"ociresolve-go: {path}: {command[0]}"), done.stderr
            assert "Unavailable" in done.stderr and why in done.stderr, done.stderr


def test_a_bad_command_line_is_exit_2_with_the_usage(go_client: Path, socket_dir: Path) -> None:
    for args in (["lookup"], ["lookup", "-pid", "1", "-cgroup-id", "2"], ["frob"], []):
        done = run_go(go_client, socket_dir / "unused.sock", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
        assert "usage:" in done.stderr or "give one of" in done.stderr, done.stderr


# -- helpers -----------------------------------------------------------------------------------


def unused_pid() -> int:
    """A PID no process has (pid_max is at most 2^22)."""
    return 2**22 + 1
