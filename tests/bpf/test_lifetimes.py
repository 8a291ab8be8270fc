"""Connection lifetimes on the real kernel: ``ConnectProbe(lifetimes=True)`` follows the fd of
each reported connect and says what became of it (``failed``, ``close``, ``exit``)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from probe_events import collect, settle

from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.probe import ConnectProbe

pytestmark = [pytest.mark.bpf]

# Connects to argv[1] (a unix socket), prints the fd, then exits without closing it.
_EXIT_WITHOUT_CLOSE = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print(s.fileno(), flush=True)
os._exit(0)
"""

# Connects to argv[2] (not traced) and closes it; opens and closes files; never connects to
# argv[1] (traced) but closes fds of every number up to 64 that it has.
_CLOSES_UNTRACED = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[2])
finally:
    s.close()
for _ in range(3):
    os.close(os.open("/dev/null", os.O_RDONLY))
os.closerange(3, 64)
"""

Kinds = list[tuple[str, int]]


@pytest.fixture
def listener(sock_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening unix socket in ``sock_dir`` (accepting is left to the test)."""
    path = str(sock_dir / "ctrd.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(16)
    try:
        yield server, path
    finally:
        server.close()


def of(events: list[ConnectEvent], tgid: int) -> Kinds:
    """``(kind, fd)`` of the process's events, in order."""
    return [(e.kind, e.fd) for e in events if e.tgid == tgid]


def has(tgid: int, kind: str) -> Callable[[list[ConnectEvent]], bool]:
    return lambda events: any(e.tgid == tgid and e.kind == kind for e in events)


def marker(probe: ConnectProbe, path: str) -> list[ConnectEvent]:
    """Connects once more to ``path`` (traced; no listener: a ``failed``) and returns every
    event up to that one's: the events of what came before have all been read."""
    fd = connect_once(path)
    return collect(probe, lambda events: any(e.kind == "failed" and e.fd == fd for e in events))


def connect_once(path: str) -> int:
    """A connect() that fails (no listener at ``path``); the fd it was made on."""
    with socket.socket(socket.AF_UNIX) as s:
        with contextlib.suppress(OSError):
            s.connect(path)
        return s.fileno()


@pytest.fixture
def probe(sock_dir: Path) -> Iterator[ConnectProbe]:
    with ConnectProbe(unix_paths=[f"{sock_dir}/*"], exclude_comms=(), lifetimes=True) as started:
        yield started


# -- what becomes of a connect -----------------------------------------------------------------


def test_connect_then_close(probe: ConnectProbe, listener: tuple[socket.socket, str]) -> None:
    server, path = listener
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    fd = client.fileno()
    peer, _ = server.accept()
    peer.close()  # the accepted socket: not a connect, not followed
    client.close()
    events = collect(probe, has(os.getpid(), "close"))
    mine = [e for e in events if e.tgid == os.getpid()]
    assert [(e.kind, e.fd) for e in mine] == [("connect", fd), ("close", fd)]
    connect, close = mine
    assert connect.address == path and connect.family == "unix"
    # A lifetime event names the process, the fd, the thread and the time; nothing else.
    assert close.tid == threading.get_native_id()
    assert (close.comm, close.address, close.cgroup_id, close.port) == ("", "", 0, None)
    assert connect.time_ns <= close.time_ns <= time.monotonic_ns()
    assert probe.lost == 0


def test_a_failed_connect_then_its_close_is_not_reported(
    probe: ConnectProbe, sock_dir: Path
) -> None:
    missing = str(sock_dir / "nobody.sock")  # ENOENT
    refused = str(sock_dir / "refused.sock")  # a socket file with no listener: ECONNREFUSED
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(refused)
    codes: list[int | None] = []
    fds: list[int] = []
    for path in (missing, refused):
        with socket.socket(socket.AF_UNIX) as s:
            fds.append(s.fileno())
            try:
                s.connect(path)
            except OSError as exc:
                codes.append(exc.errno)
            else:
                codes.append(None)
    assert codes == [errno.ENOENT, errno.ECONNREFUSED]
    events = collect(probe, lambda evs: [e.kind for e in evs].count("failed") >= 2)
    events += settle(probe)
    assert of(events, os.getpid()) == [
        ("connect", fds[0]),
        ("failed", fds[0]),
        ("connect", fds[1]),
        ("failed", fds[1]),
    ]


def test_a_process_that_exits_without_closing(
    probe: ConnectProbe, listener: tuple[socket.socket, str]
) -> None:
    _, path = listener
    child = subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, path],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # subprocess.run has reaped it: its pid is the tgid of its events.
    pids = collect(probe, lambda evs: any(e.kind == "exit" for e in evs))
    (pid,) = {e.tgid for e in pids if e.kind == "exit"}
    fd = int(child.stdout)
    assert of(pids, pid) == [("connect", fd), ("exit", -1)]
    (exit_event,) = [e for e in pids if e.kind == "exit"]
    assert exit_event.tid == pid


def test_a_process_that_closed_its_connection_before_exiting(
    probe: ConnectProbe, listener: tuple[socket.socket, str]
) -> None:
    """Its close is reported; its exit may be too, with no connection left to end."""
    _, path = listener
    code = "import socket,sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.close()"
    proc = subprocess.Popen([sys.executable, "-c", code, path])
    assert proc.wait(timeout=30) == 0
    events = collect(probe, has(proc.pid, "close"))
    events += settle(probe)
    kinds = of(events, proc.pid)
    assert kinds[:2] == [("connect", kinds[0][1]), ("close", kinds[0][1])]
    assert kinds[2:] in ([], [("exit", -1)]), kinds


def test_closing_fds_never_connected_to_a_traced_path_reports_nothing(
    probe: ConnectProbe, sock_dir: Path, listener: tuple[socket.socket, str]
) -> None:
    _, path = listener
    # A traced connection, closed; then its fd number reused by a file, closed too.
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    fd = client.fileno()
    client.close()
    reused = os.open("/dev/null", os.O_RDONLY)
    assert reused == fd
    os.close(reused)
    # Another process: an untraced connect, files, every fd up to 64 closed; no traced connect.
    untraced = str(Path("/tmp") / f"ocilife-untraced-{uuid.uuid4().hex[:8]}.sock")
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(untraced)
        other.listen(1)
        proc = subprocess.Popen([sys.executable, "-c", _CLOSES_UNTRACED, path, untraced])
        assert proc.wait(timeout=30) == 0
    os.unlink(untraced)
    events = marker(probe, str(sock_dir / "marker.sock"))
    assert of(events, proc.pid) == []
    assert of(events, os.getpid())[:2] == [("connect", fd), ("close", fd)]
    assert [e.kind for e in events if e.tgid == os.getpid()][2:] == ["connect", "failed"]


def test_a_non_blocking_connect_to_a_full_backlog(probe: ConnectProbe, sock_dir: Path) -> None:
    """A unix listener's backlog full: a non-blocking connect fails with EAGAIN (failed); the
    one that got in is followed until its close."""
    path = str(sock_dir / "full.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(0)  # one pending connection fills it
        first = socket.socket(socket.AF_UNIX)
        first.setblocking(False)
        first.connect(path)
        second = socket.socket(socket.AF_UNIX)
        second.setblocking(False)
        with pytest.raises(BlockingIOError):
            second.connect(path)
        fds = first.fileno(), second.fileno()
        second.close()
        first.close()
    events = collect(probe, has(os.getpid(), "close"))
    events += settle(probe)
    assert of(events, os.getpid()) == [
        ("connect", fds[0]),
        ("connect", fds[1]),
        ("failed", fds[1]),
        ("close", fds[0]),
    ]


def test_an_inet_connect_in_progress_is_followed() -> None:
    """EINPROGRESS is not a failure: the socket is followed until its close."""
    with socket.socket(socket.AF_INET) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        with ConnectProbe(families=("inet",), ports=[port], lifetimes=True) as probe:
            client = socket.socket(socket.AF_INET)
            client.setblocking(False)
            code = client.connect_ex(("127.0.0.1", port))
            assert code in (0, errno.EINPROGRESS)
            fd = client.fileno()
            time.sleep(0.05)
            client.close()
            events = collect(probe, has(os.getpid(), "close"))
            events += settle(probe)
    assert of(events, os.getpid()) == [("connect", fd), ("close", fd)], code


def test_a_connect_from_one_thread_closed_by_another(
    probe: ConnectProbe, listener: tuple[socket.socket, str]
) -> None:
    """The fds are the process's: the close pairs with the connect whichever thread makes it."""
    _, path = listener
    made: list[socket.socket] = []
    tids: list[int] = []

    def connector() -> None:
        tids.append(threading.get_native_id())
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        made.append(s)

    def closer() -> None:
        tids.append(threading.get_native_id())
        made[0].close()

    fd = -1
    for work in (connector, closer):
        if made:
            fd = made[0].fileno()
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    events = collect(probe, has(os.getpid(), "close"))
    mine = [e for e in events if e.tgid == os.getpid()]
    assert [(e.kind, e.fd) for e in mine] == [("connect", fd), ("close", fd)]
    assert [e.tid for e in mine] == tids
    assert len(set(tids)) == 2 and os.getpid() not in tids


def test_a_thread_exiting_is_not_its_process_exiting(
    probe: ConnectProbe, listener: tuple[socket.socket, str]
) -> None:
    _, path = listener
    made: list[socket.socket] = []

    def connector() -> None:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        made.append(s)

    thread = threading.Thread(target=connector)
    thread.start()
    thread.join()
    (client,) = made
    fd = client.fileno()
    events = settle(probe, 0.3)
    client.close()
    events += collect(probe, has(os.getpid(), "close"))
    assert of(events, os.getpid()) == [("connect", fd), ("close", fd)]


@pytest.mark.parametrize("delivery", ["perf", "ringbuf-callback"])
def test_the_same_events_through_the_other_deliveries(
    delivery: str,
    sock_dir: Path,
    listener: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, path = listener
    if delivery == "ringbuf-callback":
        monkeypatch.setattr(ConnectProbe, "_direct_ring", False)
    with ConnectProbe(
        unix_paths=[f"{sock_dir}/*"],
        exclude_comms=(),
        lifetimes=True,
        delivery="perf" if delivery == "perf" else "ringbuf",
    ) as probe:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        fd = client.fileno()
        client.close()
        failed = connect_once(str(sock_dir / "nobody.sock"))
        child = subprocess.run(
            [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, path],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        events = collect(probe, lambda evs: any(e.kind == "exit" for e in evs))
    (pid,) = {e.tgid for e in events if e.kind == "exit"}
    assert of(events, os.getpid()) == [
        ("connect", fd),
        ("close", fd),
        ("connect", failed),
        ("failed", failed),
    ]
    assert of(events, pid) == [("connect", int(child.stdout)), ("exit", -1)]


def test_without_lifetimes_only_connects(
    sock_dir: Path, listener: tuple[socket.socket, str]
) -> None:
    _, path = listener
    with ConnectProbe(unix_paths=[f"{sock_dir}/*"], exclude_comms=()) as probe:
        assert "-DOCI_LIFETIMES" not in probe.cflags()
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.close()
        connect_once(str(sock_dir / "nobody.sock"))
        child = subprocess.Popen(
            [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, path], stdout=subprocess.DEVNULL
        )
        assert child.wait(timeout=30) == 0
        events = collect(probe, lambda evs: any(e.tgid == child.pid for e in evs))
        events += settle(probe)
    assert {e.kind for e in events} == {"connect"}
    assert len(of(events, os.getpid())) == 2 and len(of(events, child.pid)) == 1


# -- what it costs -----------------------------------------------------------------------------

_CLOSE_TRACEPOINT = b"syscalls:sys_enter_close"
_CLOSE_PROGRAM = b"tracepoint__syscalls__sys_enter_close"


def _closes_per_second(fd: int, seconds: float) -> tuple[int, float]:
    """``os.close(os.dup(fd))`` in a tight loop for about ``seconds``."""
    dup, close, now = os.dup, os.close, time.perf_counter
    count = 0
    start = now()
    end = start + seconds
    while True:
        for _ in range(1000):
            close(dup(fd))
        count += 1000
        if now() >= end:
            return count, now() - start


def test_the_cost_of_a_close_with_lifetimes(sock_dir: Path) -> None:
    """Prints the cost that lifetimes add to every close() of an fd that is not followed (a
    dup of /dev/null): the connect probe loaded in both cases, its close program attached or
    detached in turns, a second each. Nothing is asserted about the times."""
    fd = os.open("/dev/null", os.O_RDONLY)
    rounds = 3
    ns: dict[str, list[float]] = {"no probe": [], "lifetimes off": [], "lifetimes on": []}
    try:
        for _ in range(rounds):
            count, took = _closes_per_second(fd, 1.0)
            ns["no probe"].append(took / count * 1e9)
        with ConnectProbe(unix_paths=[f"{sock_dir}/*"], exclude_comms=(), lifetimes=True) as probe:
            bpf = probe._bpf
            attached = True
            for _ in range(rounds):
                for state in ("lifetimes off", "lifetimes on"):
                    want = state == "lifetimes on"
                    if want != attached:
                        if want:
                            bpf.attach_tracepoint(tp=_CLOSE_TRACEPOINT, fn_name=_CLOSE_PROGRAM)
                        else:
                            bpf.detach_tracepoint(_CLOSE_TRACEPOINT)
                        attached = want
                    count, took = _closes_per_second(fd, 1.0)
                    ns[state].append(took / count * 1e9)
            # Still working once re-attached.
            if not attached:
                bpf.attach_tracepoint(tp=_CLOSE_TRACEPOINT, fn_name=_CLOSE_PROGRAM)
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(str(sock_dir / "cost.sock"))
                server.listen(1)
                client = socket.socket(socket.AF_UNIX)
                client.connect(str(sock_dir / "cost.sock"))
                client.close()
            assert has(os.getpid(), "close")(collect(probe, has(os.getpid(), "close")))
    finally:
        os.close(fd)
    best = {state: min(values) for state, values in ns.items()}
    print()
    for state, values in ns.items():
        print(f"close(dup(fd)) {state}: " + ", ".join(f"{v:.0f}" for v in values) + " ns")
    print(
        f"lifetimes add {best['lifetimes on'] - best['lifetimes off']:.0f} ns per close() "
        f"(best of {rounds}: {best['lifetimes off']:.0f} -> {best['lifetimes on']:.0f} ns; "
        f"without any probe {best['no probe']:.0f} ns)"
    )
