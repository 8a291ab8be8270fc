"""``ociresolve serve`` as a process, as a DaemonSet runs it: ready after the initial scan,
answering ``lookup`` and ``list``, stopping cleanly on SIGTERM and SIGINT, and refusing to
start, with a clear message and exit 2, when it cannot serve."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemonfakes import (
    APP_PID,
    Node,
    free_port,
)

from ociresolve.cli import main

READY_WITHIN = 15.0
STOP_WITHIN = 2.0


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    socket: Path
    port: int

    def get(self, path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        finally:
            connection.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                pytest.fail(f"serve exited {self.process.returncode}: {err}")
            try:
                if self.get("/readyz") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        pytest.fail("serve never became ready")

    def stop(self, signum: int) -> tuple[int, float, str]:
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            _, err = self.process.communicate(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, time.monotonic() - started, err


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ociresolve.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NODE_NAME": "node-7", **(env or {})},
    )


def serve_args(node: Node, socket: Path, port: int) -> list[str]:
    return [
        "--socket",
        str(socket),
        *node.node_args(),
        "--no-cri",
        "--metrics-address",
        f"127.0.0.1:{port}",
    ]


def run_to_end(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = serve(*args, env=env)
    try:
        _, err = process.communicate(timeout=20.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, err


@pytest.fixture
def daemon(node: Node, sockets: Path) -> Iterator[Daemon]:
    port = free_port()
    socket = sockets / "api.sock"
    process = serve(*serve_args(node, socket, port))
    daemon = Daemon(process, socket, port)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# -- the daemon as a process ---------------------------------------------------------------------


def test_serve_answers_lookup_and_list(
    node: Node, daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert daemon.get("/healthz") == 200
    assert main(["lookup", str(APP_PID), "--daemon-socket", str(daemon.socket), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["container_id"] == node.app
    assert record["source"] == "index"
    assert main(["list", "--json", "--daemon-socket", str(daemon.socket)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["container_id"] for r in listed} == {node.app, node.crio, node.pod.sandbox_id}
    app = next(r for r in listed if r["container_id"] == node.app)
    assert app["pid"] == APP_PID and app["cgroup_id"] == node.app_cgroup_id


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_it_cleanly(daemon: Daemon, signum: int) -> None:
    code, elapsed, err = daemon.stop(signum)
    assert code == 0, err
    assert elapsed < STOP_WITHIN
    assert not daemon.socket.exists()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert any("msg=ready" in line and "node=node-7" in line for line in lines), err
    assert "msg=stopped" in lines[-1]


def test_a_restart_rebuilds_the_index(node: Node, daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGTERM)[0] == 0
    again = Daemon(serve(*serve_args(node, daemon.socket, daemon.port)), daemon.socket, daemon.port)
    try:
        again.wait_ready()
        assert main(["lookup", str(APP_PID), "--daemon-socket", str(again.socket)]) == 0
    finally:
        assert again.stop(signal.SIGTERM)[0] == 0


def test_a_second_daemon_on_the_same_socket_exits_2(node: Node, daemon: Daemon) -> None:
    code, err = run_to_end(*serve_args(node, daemon.socket, free_port()))
    assert code == 2
    assert f"another daemon is serving on {daemon.socket}" in err
    assert "Traceback" not in err
    assert daemon.process.poll() is None  # the first one serves on
    assert daemon.get("/readyz") == 200


def test_a_bad_metrics_address_exits_2(node: Node, sockets: Path) -> None:
    address = "localhost"
    args = [*serve_args(node, sockets / "api.sock", 0)[:-1], address]
    code, err = run_to_end(*args)
    assert code == 2
    assert "metrics address" in err and address in err
    assert "Traceback" not in err
    assert not (sockets / "api.sock").exists()


def test_a_socket_path_that_cannot_be_used_exits_2(node: Node, sockets: Path) -> None:
    (sockets / "file").write_text("")
    code, err = run_to_end(*serve_args(node, sockets / "file" / "api.sock", free_port()))
    assert code == 2
    assert "Traceback" not in err
    assert str(sockets / "file" / "api.sock") in err


def test_a_bad_log_level_in_the_environment_exits_2(node: Node, sockets: Path) -> None:
    code, err = run_to_end(
        *serve_args(node, sockets / "api.sock", free_port()),
        env={"OCIRESOLVE_LOG_LEVEL": "verbose"},
    )
    assert code == 2
    assert "Traceback" not in err
    assert "verbose" in err


def test_trace_connect_without_bcc_exits_2(node: Node, sockets: Path, tmp_path: Path) -> None:
    """BCC hidden from the interpreter (a ``bcc`` that cannot be imported comes first on the
    path), as on a node without python3-bpfcc, whoever runs the test."""
    shadow = tmp_path / "no-bcc"
    (shadow / "bcc").mkdir(parents=True)
    (shadow / "bcc" / "__init__.py").write_text('raise ImportError("no BCC on this node")\n')
    code, err = run_to_end(
        *serve_args(node, sockets / "api.sock", free_port()),
        "--trace-connect",
        env={"PYTHONPATH": str(shadow)},
    )
    assert code == 2
    assert "--trace-connect" in err and "BCC" in err and "no BCC on this node" in err
    assert "Traceback" not in err
    assert not (sockets / "api.sock").exists()


def test_trace_connect_without_privileges_exits_2(node: Node, sockets: Path) -> None:
    """Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (as root: dropped from the bounding set
    with util-linux's setpriv, so the exec'd daemon does not get them back)."""
    drop = (
        []
        if os.geteuid() != 0
        else [
            shutil.which("setpriv") or pytest.fail("setpriv (util-linux) is needed as root"),
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--",
        ]
    )
    process = subprocess.Popen(
        [
            *drop,
            sys.executable,
            "-m",
            "ociresolve.cli",
            "serve",
            *serve_args(node, sockets / "api.sock", free_port()),
            "--trace-connect",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = process.communicate(timeout=20.0)
    assert process.returncode == 2, err
    assert "--trace-connect" in err
    assert "Traceback" not in err
