"""The node daemon (``ociresolve serve``) on a real containerd + runc, every generation, under
faults: a restart while clients watch, hostile clients on its socket, SIGTERM with everything
open, a deprecation endpoint that hangs, answers garbage or restarts.

One daemon per test, run as its own process on the session containerd's state directory and
CRI socket, where containerd runs (``Containerd.command``), stopped and started again by its
PID as a DaemonSet's pod would be.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
from harness import (
    UNIXCONNECT,
    Containerd,
    ContainerSpec,
    DaemonProcess,
    Pod,
    PodFactory,
)
from harness.generations import DEFAULT
from harness.introspection import V1ALPHA2, FakeIntrospection, parse_logfmt
from real_pods import TIMEOUT, init_pid, poll

from ociresolve import DaemonClient, DaemonUnavailable, IndexedContainer, RemoteResolver

pytestmark = pytest.mark.e2e

SLEEP = ["sleep", "3600"]
IN_CONTAINER = "/run/containerd/containerd.sock"  # the socket dir, bind-mounted
OPENED = "containerd socket connection opened"
STOPPED = "containerd socket tracer stopped"
HANDSHAKE_TIMEOUT = 5.0  # the API server drops a connection with no HTTP/2 preface after this
SILENT = 500  # connections that never send a byte
DEADLINE = 1.0  # of each lookup a well-behaved client makes while hostile ones are connected
# RemoteResolver waits at most this long between two attempts to watch again.
RESYNC_BACKOFF = 2.0


# -- helpers -----------------------------------------------------------------------------------


def serve(containerd: Containerd, socket_dir: Path, *more: str) -> DaemonProcess:
    return DaemonProcess(
        socket_dir / "ociresolve.sock",
        [
            "--runtime-root",
            str(containerd.state_dir),
            "--cri-socket",
            str(containerd.socket),
            *more,
        ],
        enter=containerd.command,
    )


def members(pod: Pod) -> list[str]:
    return [pod.sandbox_id, *pod.containers.values()]


def listing(client: DaemonClient) -> dict[str, IndexedContainer]:
    return {r.meta.container_id or "": r for r in client.containers()}


class Watching:
    """``DaemonClient.watch()`` iterated in a thread, keeping every event and what ended it."""

    def __init__(self, client: DaemonClient) -> None:
        self.watch = client.watch()
        self.kinds: list[str] = []
        self.synced = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="watching", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for kind, _record in self.watch:
                self.kinds.append(kind)
                if kind == "synced":
                    self.synced.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()

    def close(self) -> None:
        self.watch.cancel()
        self._thread.join(TIMEOUT)


# -- restart -----------------------------------------------------------------------------------


def test_a_daemon_restart_while_clients_watch(
    containerd: Containerd, pod_factory: PodFactory, socket_dir: Path
) -> None:
    """SIGTERM, then the daemon again on the same socket, with a ``RemoteResolver`` and a raw
    watch open. The raw watch ends with ``DaemonUnavailable`` and a new one works; the
    ``RemoteResolver`` keeps answering from its copy meanwhile, resyncs on its own, and then
    knows a pod made while the daemon was down; the new daemon rebuilt the same index from the
    bundles on disk."""
    before_pod = pod_factory("before-restart-2a7f", [ContainerSpec("app", SLEEP)], namespace="r")
    daemon = serve(containerd, socket_dir)
    with ExitStack() as stack:
        stack.enter_context(daemon)
        client = stack.enter_context(DaemonClient(str(daemon.socket)))
        for cid in members(before_pod):
            poll(
                lambda cid=cid: (r := client.lookup_container(cid).record) and r.cgroup_id,
                "the pod indexed with its cgroup ids",
            )
        before = listing(client)
        remote = stack.enter_context(RemoteResolver(str(daemon.socket)))
        raw = Watching(client)
        stack.callback(raw.close)
        assert raw.synced.wait(TIMEOUT)
        app_id = before_pod.container_id("app")
        app_pid = init_pid(containerd, app_id)
        app_cgroup = before[app_id].cgroup_id
        assert app_cgroup is not None

        daemon.stop()
        assert raw.ended.wait(TIMEOUT), "the raw watch did not end with the daemon"
        assert isinstance(raw.error, DaemonUnavailable), repr(raw.error)
        # Down: the copy still answers what it holds.
        meta = remote.lookup_cgroup_id(app_cgroup)
        assert meta is not None and meta.container_id == app_id
        during = pod_factory("during-restart-6c3d", [ContainerSpec("app", SLEEP)], namespace="r")
        assert remote.resyncs == 0

        daemon.start()
        poll(lambda: remote.resyncs >= 1, "the RemoteResolver's resync", timeout=30.0)
        for cid in members(during):
            poll(
                lambda cid=cid: (r := remote.container(cid)) is not None and r.cgroup_id,
                "the pod made during the downtime, in the copy",
            )
        resolution = remote.resolve_pid(app_pid)
        assert resolution is not None and resolution.source == "index"
        assert resolution.meta.container_id == app_id
        during_id = during.container_id("app")
        during_cgroup = remote.container(during_id).cgroup_id
        assert during_cgroup is not None
        meta = remote.lookup_cgroup_id(during_cgroup)
        assert meta is not None and meta.container_id == during_id

        # A new watch works: the current set, then synced.
        again = Watching(client)
        stack.callback(again.close)
        assert again.synced.wait(TIMEOUT), repr(again.error)
        assert again.kinds.count("added") >= len(members(before_pod)) + len(members(during))

        # Nothing lost: the rebuilt index holds every container the first one held, the same.
        after = listing(client)
        assert set(after) == set(before) | set(members(during))
        for cid, record in before.items():
            assert after[cid] == record, cid


def test_a_remote_resolver_resyncs_promptly_after_a_long_outage(
    containerd: Containerd, socket_dir: Path
) -> None:
    """After the daemon was away for a while (a DaemonSet rollout, an image pull), a
    ``RemoteResolver`` is back in sync within its own backoff (at most 2 s between attempts)
    of the daemon being ready again, however long the outage."""
    daemon = serve(containerd, socket_dir)
    with daemon, RemoteResolver(str(daemon.socket)) as remote:
        daemon.stop()
        time.sleep(18.0)  # the outage
        daemon.start()
        ready = time.monotonic()
        poll(lambda: remote.resyncs >= 1, "the RemoteResolver's resync", timeout=60.0)
        late = time.monotonic() - ready
        assert late < RESYNC_BACKOFF + 1.0, (
            f"resynced {late:.1f}s after the daemon was ready again, its backoff is "
            f"{RESYNC_BACKOFF}s: the watch kept failing on a channel waiting out gRPC's own "
            "reconnect backoff"
        )


# -- hostile clients ---------------------------------------------------------------------------


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# Dropped by the daemon at once.
GARBAGE = {
    "random bytes": os.urandom(4096),
    "HTTP/1.1": b"GET /ociresolve.v1.Resolver/List HTTP/1.1\r\nHost: x\r\n\r\n",
    "a preface, then junk": _PREFACE + os.urandom(512),
    # A preface, empty SETTINGS, then a HEADERS frame that says 16 MB and sends 9 bytes.
    "an oversized frame": _PREFACE + _frame(4, 0, 0, b"") + _frame(1, 4, 1, b"x" * 9, 1 << 24),
}
# Held like an idle client's connection, until the keepalive ping goes unanswered (60 s here):
# they must not stall anyone meanwhile.
STALLED = {
    "a preface and SETTINGS, then silence": _PREFACE + _frame(4, 0, 0, b""),
    "a DATA frame never finished": _PREFACE
    + _frame(4, 0, 0, b"")
    + _frame(0, 0, 1, b"\0" * 64, 1 << 24),
    "a HEADERS frame never finished": _PREFACE
    + _frame(4, 0, 0, b"")
    + _frame(1, 4, 1, b"x" * 9, 16000),
}


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the daemon closed this connection (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_slowloris_and_garbage_clients_do_not_stall_lookups(
    containerd: Containerd, pod_factory: PodFactory, socket_dir: Path
) -> None:
    """Connections that never send, that stop half-way through a frame, that send garbage,
    and clients flooding misses, all at once: lookups of a real pod keep answering within
    their deadline, the silent and garbage connections are dropped, and the daemon lives on
    with its memory bounded."""
    pod = pod_factory("victim-4e8b", [ContainerSpec("app", SLEEP)], namespace="hostile")
    app_id = pod.container_id("app")
    app_pid = init_pid(containerd, app_id)
    daemon = serve(containerd, socket_dir)
    with ExitStack() as stack:
        stack.enter_context(daemon)
        client = stack.enter_context(DaemonClient(str(daemon.socket), timeout=DEADLINE))
        poll(
            lambda: (r := client.lookup_container(app_id).record) and r.cgroup_id,
            "the pod indexed with its cgroup id",
        )
        record = client.lookup_container(app_id).record
        assert record is not None and record.cgroup_id is not None
        rss_before = psutil.Process(daemon.pid).memory_info().rss

        silent = [_connect(daemon.socket) for _ in range(SILENT)]
        hostile: dict[str, socket.socket] = {}
        for name, payload in {**GARBAGE, **STALLED}.items():
            hostile[name] = _connect(daemon.socket)
            hostile[name].sendall(payload)
        for sock in [*silent, *hostile.values()]:
            stack.callback(sock.close)

        stop_flood = threading.Event()
        flood_errors: list[BaseException] = []

        def flood(make: Callable[[int], list[tuple[str, int | str]]]) -> None:
            with DaemonClient(str(daemon.socket), timeout=30.0) as flooder:
                n = 0
                while not stop_flood.is_set():
                    try:
                        flooder.lookup_batch(make(n))
                    except BaseException as exc:
                        flood_errors.append(exc)
                        return
                    n += 1

        floods = [
            # Unknown container ids: each a miss that goes to disk and to the CRI.
            lambda n: [("container_id", f"{n:032x}{i:032x}") for i in range(256)],
            # PIDs that do not exist and cgroup ids that nobody has.
            lambda n: [("pid", 4_000_000 + i) for i in range(1024)],
            lambda n: [("cgroup_id", (1 << 40) + n * 4096 + i) for i in range(4096)],
        ]
        threads = [threading.Thread(target=flood, args=(f,), daemon=True) for f in floods]
        for thread in threads:
            thread.start()
        stack.callback(stop_flood.set)

        # Past the handshake timeout, a well-behaved client's lookups all answer in time.
        slowest = 0.0
        answered = 0
        until = time.monotonic() + HANDSHAKE_TIMEOUT + 1.5
        while time.monotonic() < until:
            for key in (("pid", app_pid), ("cgroup_id", record.cgroup_id)):
                started = time.monotonic()
                result = client.lookup(key)
                slowest = max(slowest, time.monotonic() - started)
                assert result.status == "found", result
                assert result.record is not None and result.record.meta.container_id == app_id
                answered += 1
            time.sleep(0.01)
        stop_flood.set()
        for thread in threads:
            thread.join(TIMEOUT)
        assert not flood_errors, flood_errors
        assert answered > 100, answered

        # Garbage was dropped at once, silence after the handshake timeout.
        dropped = [*silent, *(hostile[name] for name in GARBAGE)]
        poll(
            lambda: all(_closed_by_peer(s) for s in dropped),
            "the daemon to drop the silent and garbage connections",
            timeout=TIMEOUT,
        )
        assert daemon.running
        rss_after = psutil.Process(daemon.pid).memory_info().rss
        grown = (rss_after - rss_before) / 2**20
        assert grown < 64, f"the daemon's RSS grew by {grown:.0f} MB"
        # And it still answers a new client.
        with DaemonClient(str(daemon.socket)) as fresh:
            assert fresh.lookup_pid(app_pid).status == "found"


# -- SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.bpf
def test_sigterm_drains_and_exits_within_two_seconds(
    containerd: Containerd, pod_factory: PodFactory, socket_dir: Path
) -> None:
    """``serve --trace-connect`` with watch streams open and a container traced: SIGTERM ends
    the streams (their clients hear ``DaemonUnavailable``), the tracer writes its last summary
    (the last line of stdout), and the process exits 0 within 2 s."""
    daemon = serve(
        containerd,
        socket_dir,
        "--trace-connect",
        "--trace-socket",
        IN_CONTAINER,
        "--trace-output",
        "json",
        "--trace-summary-interval",
        "0",
    )
    with ExitStack() as stack:
        stack.enter_context(daemon)
        client = stack.enter_context(DaemonClient(str(daemon.socket)))
        watches = [Watching(client) for _ in range(3)]
        for watch in watches:
            stack.callback(watch.close)
            assert watch.synced.wait(TIMEOUT)
        remote = stack.enter_context(RemoteResolver(str(daemon.socket)))
        pod = pod_factory(
            "drained-8f1a",
            [
                ContainerSpec(
                    "client",
                    [UNIXCONNECT, IN_CONTAINER],
                    mounts=[containerd.socket_mount()],
                )
            ],
            namespace="drain",
        )

        def traced() -> object:
            for line in list(daemon.lines):
                row = json.loads(line)
                if row.get("msg") == OPENED and row.get("pod_name") == pod.name:
                    return row
            return None

        poll(traced, "the daemon's tracer to name the pod")
        assert remote.synced.is_set()

        seconds = daemon.stop()
        assert seconds < 2.0, f"exited {seconds:.2f}s after SIGTERM"
        summary = json.loads(daemon.lines[-1])
        assert summary["msg"] == STOPPED, daemon.lines[-3:]
        assert summary["resolved"] >= 1 and summary["lost"] == 0
        for watch in watches:
            assert watch.ended.wait(TIMEOUT)
            assert isinstance(watch.error, DaemonUnavailable), repr(watch.error)
        assert [r["msg"] for r in daemon.logs][-2:] == ["stopping", "stopped"]


# -- a misbehaving deprecation endpoint --------------------------------------------------------

RETRYING = "cannot read containerd's deprecation warnings; retrying"
AGAIN = "reading containerd's deprecation warnings again"
OCCURRENCE = "found CRI v1alpha2 API deprecation warning"
STEADY = 0.25  # seconds a lookup may take while the deprecation endpoint misbehaves
GRPC_CORE_LINE = re.compile(r"[IWE]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\] ")


@pytest.mark.containerd(id=DEFAULT.id)  # the endpoint is a stand-in: one runtime will do
def test_a_deprecation_endpoint_that_hangs_answers_garbage_and_restarts(
    containerd: Containerd, pod_factory: PodFactory, socket_dir: Path
) -> None:
    """``serve --report-deprecations`` polling a stand-in for containerd's introspection service
    that hangs past the daemon's deadline, answers bytes that are no protobuf message, then
    goes away and comes back empty. Lookups answer at once all along; each fault is logged
    once, its end once, and the next occurrence after each is reported, as new."""
    fake = FakeIntrospection(str(socket_dir / "introspection.sock"))
    daemon = serve(
        containerd,
        socket_dir,
        "--report-deprecations",
        "--containerd-socket",
        fake.socket,
        "--deprecations-interval",
        "0.2",
    )
    pod = pod_factory("steady-2k8d", namespace="faults")
    pid = init_pid(containerd, pod.container_id("main"))
    with fake, daemon, DaemonClient(str(daemon.socket)) as client:

        def reported() -> list[dict[str, str]]:
            rows = [parse_logfmt(line) for line in list(daemon.lines)]
            return [r for r in rows if r.get("msg") == OCCURRENCE]

        def steady_lookups(what: str, seconds: float = 1.0) -> None:
            """Lookups of the pod for ``seconds``, each answered in under STEADY s."""
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.monotonic()
                assert client.lookup_pid(pid).status == "found"
                took = time.monotonic() - started
                assert took < STEADY, f"a lookup took {took:.3f}s while {what}"
                time.sleep(0.02)

        def occurs() -> None:
            """A new occurrence, reported as new with its time."""
            count = len(reported())
            when = time.time_ns()
            fake.occur(V1ALPHA2, when)
            poll(lambda: len(reported()) > count, "the occurrence reported")
            (line,) = reported()[count:]
            assert "existing" not in line, line
            seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when // 1_000_000_000))
            assert line["lastOccurrence"].startswith(seconds), (line, when)

        def logged(message: str) -> dict[str, object]:
            return daemon.wait_for_log(lambda record: record.get("msg") == message, TIMEOUT)

        poll(lambda: client.lookup_pid(pid).status == "found", "the daemon to find the pod")
        poll(lambda: fake.polls, "the first poll")
        occurs()

        fake.hang()
        hung = logged(RETRYING)  # a poll met its deadline
        assert hung["socket"] == fake.socket
        steady_lookups("the endpoint hangs")
        fake.release()
        logged(AGAIN)
        occurs()

        fake.garbage = True
        garbled = logged(RETRYING)
        assert "Server" in str(garbled["error"]), garbled
        steady_lookups("the endpoint answers garbage")
        fake.garbage = False
        logged(AGAIN)
        occurs()

        fake.stop()
        gone = logged(RETRYING)
        assert "No such file or directory" in str(gone["error"]), gone
        steady_lookups("the endpoint is gone")
        fake.restart()
        logged(AGAIN)
        occurs()
    retries = [r for r in daemon.logs if r.get("msg") == RETRYING]
    assert len(retries) == 3, retries  # once per fault
    # gRPC's own words are not the daemon's: its Python logger reports each garbage reply
    # ("Exception deserializing message!", an error with a traceback), its C core the GOAWAY of
    # the endpoint going away (a raw glog-style line on stderr).
    errors = [
        r
        for r in daemon.logs
        if r.get("level") in ("error", "raw")
        and not str(r.get("logger", "")).startswith("grpc")
        and not GRPC_CORE_LINE.match(str(r.get("msg", "")))
    ]
    assert not errors, "\n".join(map(str, errors))
    assert len(reported()) == 4
