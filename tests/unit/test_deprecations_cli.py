"""``ociresolve deprecations --clients`` against a real API server, and ``ociresolve
report-deprecations`` as a process of its own against a fake containerd speaking the real
protocol: containerd 1.6 (no warnings: said once, the process keeps running), a containerd that
reports (a line per new occurrence on stdout), SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from daemonfakes import Node, serving, socket_dir
from fakecri import socket_path
from fakeintrospection import V1ALPHA2, V1ALPHA2_MESSAGE, FakeIntrospection, warning
from test_deprecations_reporter import attributed_reporter, reporter
from tracerfakes import parse_logfmt

from ociresolve import Resolver
from ociresolve.cli import main
from ociresolve.daemon.server import ApiServer
from ociresolve.deprecations.reporter import Reporter

S = 1_000_000_000
T0 = 1_750_000_000 * S
REPO = Path(__file__).resolve().parents[2]
NODE = "node-1"
RETRYING = "cannot read containerd's deprecation warnings; retrying"
TIMEOUT = 20.0
ServeApi = Callable[[Reporter | None], ApiServer]


# -- deprecations --clients --------------------------------------------------------------------


@pytest.fixture
def serve_api(node: Node, tmp_path: Path) -> Iterator[ServeApi]:
    """Starts the API server over the node, with the deprecations service when given a
    reporter (as ``serve --report-deprecations`` does)."""
    with (
        contextlib.ExitStack() as stack,
        socket_dir(tmp_path) as directory,
        Resolver(host_root=str(node.host.root), runtime_roots=node.roots, cri=False) as resolver,
    ):

        def start(made: Reporter | None) -> ApiServer:
            return stack.enter_context(serving(resolver, directory / "api.sock", reporter=made))

        yield start


def clients(capsys: pytest.CaptureFixture[str], api: ApiServer, *args: str) -> tuple[int, str, str]:
    code = main(["deprecations", "--clients", "--daemon-socket", api.socket_path, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_clients_as_a_table(serve_api: ServeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api = serve_api(attributed_reporter())
    code, out, err = clients(capsys, api)
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == [
        "DEPRECATION",
        "POD",
        "CONTAINER",
        "WORKLOAD",
        "COMM",
        "CONFIDENCE",
        "OCCURRENCES",
        "LAST",
        "SEEN",
    ]
    assert row.split() == [
        V1ALPHA2,
        "legacy/collector-5d9f",
        "main",
        "-",
        "legacy",
        "0.83",
        "5/5",
        "2025-06-15T15:07:20.003Z",
    ]


def test_clients_as_json(serve_api: ServeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api = serve_api(attributed_reporter())
    code, out, _ = clients(capsys, api, "--json")
    assert code == 0
    (row,) = map(json.loads, out.splitlines())
    assert row == {
        "deprecation": V1ALPHA2,
        "pod_namespace": "legacy",
        "pod_name": "collector-5d9f",
        "container": "main",
        "workload": None,
        "comm": "legacy",
        "confidence": 0.833,
        "occurrences": 5,
        "considered": 5,
        "last_seen": "2025-06-15T15:07:20.003Z",
        "container_id": f"{4242:064x}",
        "pid": 4242,
        "status": "attributed",
    }


def test_clients_none_yet_without_a_tracer(
    serve_api: ServeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    made, _ = reporter()
    api = serve_api(made)
    code, out, err = clients(capsys, api)
    assert code == 0
    assert out.split() == [
        "DEPRECATION",
        "POD",
        "CONTAINER",
        "WORKLOAD",
        "COMM",
        "CONFIDENCE",
        "OCCURRENCES",
        "LAST",
        "SEEN",
    ]
    assert "runs no tracer (--trace-connect)" in err
    code, out, _ = clients(capsys, api, "--json")
    assert (code, out) == (0, "")


def test_clients_from_a_daemon_that_does_not_report(
    serve_api: ServeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    api = serve_api(None)
    code, out, err = clients(capsys, api)
    assert (code, out) == (1, "")
    assert err == (
        f"ociresolve: the daemon at {api.socket_path} does not report deprecations (serve "
        "--report-deprecations)\n"
    )


def test_clients_without_a_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "none.sock")
    code = main(["deprecations", "--clients", "--daemon-socket", missing])
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err.startswith("ociresolve: ") and missing in captured.err


# -- report-deprecations, a process of its own ---------------------------------------------------


class Reporting:
    """``python -m ociresolve report-deprecations ARGS``, its stdout lines and stderr log
    records (logfmt) read as they come."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ociresolve", "report-deprecations", *args],
            cwd=REPO,
            env=dict(os.environ, NODE_NAME=NODE, PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.logs: list[dict[str, str]] = []
        self.out: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._line)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._log)),
        ]
        for thread in self._threads:
            thread.start()

    def _line(self, text: str) -> None:
        self.out.append(text)
        self.stdout.put(text)

    def _log(self, text: str) -> None:
        try:
            self.logs.append(dict(parse_logfmt(text)))
        except (AssertionError, ValueError, IndexError):
            self.logs.append({"msg": text, "level": "raw"})

    @staticmethod
    def _read(stream: IO[str], sink: Callable[[str], None]) -> None:
        for raw in stream:
            sink(raw.rstrip("\n"))
        stream.close()

    def next_line(self, timeout: float = TIMEOUT) -> dict[str, str]:
        return dict(parse_logfmt(self.stdout.get(timeout=timeout)))

    def wait_log(self, msg: str, timeout: float = TIMEOUT) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in list(self.logs):
                if record.get("msg") == msg:
                    return record
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no log record {msg!r}: {self.logs}")

    def terminate(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for thread in self._threads:
            thread.join()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeIntrospection]:
    server = FakeIntrospection(socket_path(tmp_path, "containerd.sock")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def reporting_args(tmp_path: Path, fake: FakeIntrospection) -> list[str]:
    roots = tmp_path / "runtime-root"
    roots.mkdir()
    return [
        "--runtime-root",
        str(roots),
        "--no-cri",
        "--containerd-socket",
        fake.socket,
        "--deprecations-interval",
        "0.2",
    ]


def test_report_deprecations_on_containerd_1_6(
    fake: FakeIntrospection, reporting_args: list[str]
) -> None:
    fake.mode, fake.version = "old", "1.6.20~ds1"
    process = Reporting(reporting_args)
    try:
        record = process.wait_log(RETRYING)
        assert record["level"] == "warning"
        assert record["socket"] == fake.socket
        assert record["error"] == (
            "containerd 1.6.20~ds1 has no deprecation warnings; they need containerd >= 1.7 "
            f"(at {fake.socket})"
        )
        polls = fake.count("Server")
        deadline = time.monotonic() + TIMEOUT
        while fake.count("Server") < polls + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.count("Server") >= polls + 2, "it stopped polling"
        assert process.process.poll() is None, "it exited"
    except BaseException:
        process.kill()
        raise
    assert process.terminate() == 0
    retries = [r for r in process.logs if r.get("msg") == RETRYING]
    assert len(retries) == 1, process.logs  # said once, however often it polled
    assert not [r for r in process.logs if r.get("level") in ("error", "raw")], process.logs
    assert process.out == []
    assert [r["msg"] for r in process.logs][-1] == "stopped"


def test_report_deprecations_writes_each_occurrence(
    fake: FakeIntrospection, reporting_args: list[str]
) -> None:
    fake.set_warnings([warning(V1ALPHA2, T0, V1ALPHA2_MESSAGE)])
    process = Reporting(reporting_args)
    try:
        first = process.next_line()
        assert first["msg"] == "found CRI v1alpha2 API deprecation warning"
        assert (first["node"], first["deprecation"]) == (NODE, V1ALPHA2)
        assert (first["lastOccurrence"], first["existing"]) == ("2025-06-15T15:06:40Z", "true")
        now = time.time_ns()
        fake.occur(V1ALPHA2, now)
        second = process.next_line()
        assert "existing" not in second
        assert second["lastOccurrence"].startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
        fake.occur("io.containerd.deprecation/runtime-v1", now + 1)
        third = process.next_line()
        assert third["msg"] == "found deprecation warning"
        assert third["deprecation"] == "io.containerd.deprecation/runtime-v1"
    except BaseException:
        process.kill()
        raise
    assert process.terminate() == 0
    assert not [r for r in process.logs if r.get("level") in ("warning", "error", "raw")]
    assert process.out[3:] == []  # nothing more: no client lines without the tracer
