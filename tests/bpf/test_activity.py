"""Per-request activity on the real kernel: ``ConnectProbe(lifetimes=True, activity=True)``
reports ``send`` events for the followed unix connections, keyed by their connect's tgid and fd
and rate-limited per connection in the kernel; excluded names are marked, not dropped; the
ignored process is neither reported nor followed."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from probe_events import collect

from ociresolve.tracer import probe as probe_module
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.probe import ConnectProbe

pytestmark = [pytest.mark.bpf]

EVERY_SEND = 0  # activity_interval_ns: every send reported
ONE_MINUTE = 60 * 10**9  # the longest interval: within a test, one send per connection

# Connects to argv[1] (traced) and sends on it, on an untraced unix socket pair, from a forked
# child that inherited the socket, then on a dup of it after closing the followed fd. Prints
# "fd grandchild-pid"; sends 4 times on the followed connection (the first binds it), once of
# them from the child.
_CLIENT = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
fd = s.fileno()
s.sendall(b"preface")
a, b = socket.socketpair()
for _ in range(3):
    a.sendall(b"untraced")
s.sendall(b"1")
s.sendall(b"2")
child = os.fork()
if child == 0:
    s.sendall(b"from the child")
    os._exit(0)
os.waitpid(child, 0)
d = os.dup(fd)
s.close()
os.write(d, b"after the close")
a.sendall(b"untraced again")
print(fd, child, flush=True)
"""

# Two connections to argv[1], each sending right after its connect, then each once more.
# Prints both fds, then exits without closing them.
_TWO = r"""
import os, socket, sys
first = socket.socket(socket.AF_UNIX)
first.connect(sys.argv[1])
first.sendall(b"preface 1")
second = socket.socket(socket.AF_UNIX)
second.connect(sys.argv[1])
second.sendall(b"preface 2")
second.sendall(b"request 2")
first.sendall(b"request 1")
print(first.fileno(), second.fileno(), flush=True)
os._exit(0)
"""

Seen = list[tuple[str, int]]


@pytest.fixture
def listener(sock_dir: Path) -> Iterator[str]:
    """A listening unix socket (never accepting: the clients' small sends wait in its queue)."""
    path = str(sock_dir / "ctrd.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(16)
        yield path


def exited(pid: int) -> Callable[[list[ConnectEvent]], bool]:
    """The process's ``exit``: its last event, so every earlier one has been read."""
    return lambda events: any(e.tgid == pid and e.kind == "exit" for e in events)


def of(events: list[ConnectEvent], tgid: int) -> Seen:
    return [(e.kind, e.fd) for e in events if e.tgid == tgid]


def run_client(script: str, path: str) -> tuple[int, list[int]]:
    """Runs a client script to its end; its pid and the numbers it printed."""
    proc = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return proc.pid, [int(n) for n in out.split()]


def activity_probe(sock_dir: Path, interval_ns: int, **options: object) -> ConnectProbe:
    return ConnectProbe(
        unix_paths=[f"{sock_dir}/*"],
        lifetimes=True,
        activity=True,
        activity_interval_ns=interval_ns,
        **options,  # type: ignore[arg-type]
    )


def test_sends_are_reported_under_the_connections_key(sock_dir: Path, listener: str) -> None:
    """Every send on the followed connection (the interval 0) and none other: not on another
    unix socket of the same process, not on the same socket once its followed fd is closed; a
    child that inherited the socket sends under the connection's key, with its own tid."""
    with activity_probe(sock_dir, EVERY_SEND) as probe:
        assert probe.activity is True and probe.activity_unavailable is None
        pid, (fd, grandchild) = run_client(_CLIENT, listener)
        events = collect(probe, exited(pid))
        assert probe.lost == 0
    assert of(events, pid) == [
        ("connect", fd),
        ("send", fd),
        ("send", fd),
        ("send", fd),
        ("send", fd),
        ("close", fd),
        ("exit", -1),
    ]
    sends = [e for e in events if e.tgid == pid and e.kind == "send"]
    assert [e.tid for e in sends] == [pid, pid, pid, grandchild]
    connect = next(e for e in events if e.tgid == pid and e.kind == "connect")
    for send in sends:
        assert (send.family, send.comm, send.address, send.port) == ("unix", "", "", None)
        assert send.cgroup_id == connect.cgroup_id  # the sender's: the same cgroup here
        assert connect.time_ns < send.time_ns <= time.monotonic_ns()
    assert not [e for e in events if e.tgid == grandchild]


def test_the_rate_limit_holds_per_connection(sock_dir: Path, listener: str) -> None:
    """With an interval longer than the test, each connection reports its first send only (the
    one that binds it), whoever sends afterwards."""
    with activity_probe(sock_dir, ONE_MINUTE) as probe:
        pid, (fd, _) = run_client(_CLIENT, listener)
        two, (first, second) = run_client(_TWO, listener)
        events = collect(probe, lambda evs: exited(pid)(evs) and exited(two)(evs))
    assert of(events, pid) == [("connect", fd), ("send", fd), ("close", fd), ("exit", -1)]
    assert of(events, two) == [
        ("connect", first),
        ("send", first),
        ("connect", second),
        ("send", second),
        ("exit", -1),
    ]


def test_two_connections_of_one_process_each_bind_their_own_socket(
    sock_dir: Path, listener: str
) -> None:
    with activity_probe(sock_dir, EVERY_SEND) as probe:
        pid, (first, second) = run_client(_TWO, listener)
        events = collect(probe, exited(pid))
    assert of(events, pid) == [
        ("connect", first),
        ("send", first),
        ("connect", second),
        ("send", second),
        ("send", second),
        ("send", first),
        ("exit", -1),
    ]


@pytest.mark.parametrize("delivery", ["perf", "ringbuf-callback"])
def test_the_same_sends_through_the_other_deliveries(
    delivery: str, sock_dir: Path, listener: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if delivery == "ringbuf-callback":
        monkeypatch.setattr(ConnectProbe, "_direct_ring", False)
    with activity_probe(
        sock_dir, EVERY_SEND, delivery="perf" if delivery == "perf" else "ringbuf"
    ) as probe:
        pid, (first, second) = run_client(_TWO, listener)
        events = collect(probe, exited(pid))
    assert [kind for kind, _ in of(events, pid)] == ["connect", "send", "connect"] + [
        "send"
    ] * 3 + ["exit"]
    assert {e.fd for e in events if e.tgid == pid and e.kind == "send"} == {first, second}


def test_without_activity_no_sends(sock_dir: Path, listener: str) -> None:
    with ConnectProbe(unix_paths=[f"{sock_dir}/*"], lifetimes=True) as probe:
        assert probe.activity is False and probe.activity_unavailable is None
        assert "-DOCI_ACTIVITY" not in probe.cflags()
        pid, (fd, _) = run_client(_CLIENT, listener)
        events = collect(probe, exited(pid))
    assert of(events, pid) == [("connect", fd), ("close", fd), ("exit", -1)]


def test_a_kernel_without_the_send_tracepoint(
    sock_dir: Path,
    listener: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Simulated: the probe starts without activity, says why once, and follows lifetimes."""
    monkeypatch.setattr(
        probe_module, "_activity_unavailable", lambda _bcc: "no tracepoint sock:sock_send_length"
    )
    with caplog.at_level(logging.WARNING, logger=probe_module.__name__):
        probe = activity_probe(sock_dir, EVERY_SEND)
        with probe:
            assert probe.activity is False
            assert probe.activity_unavailable == "no tracepoint sock:sock_send_length"
            assert "-DOCI_ACTIVITY" not in probe.cflags()
            pid, (fd, _) = run_client(_CLIENT, listener)
            events = collect(probe, exited(pid))
    assert of(events, pid) == [("connect", fd), ("close", fd), ("exit", -1)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sock:sock_send_length" in warnings[0]


# -- names and the ignored process -------------------------------------------------------------

_PR_SET_NAME = 15


def _in_thread_named(comm: str, work: Callable[[], int]) -> int:
    """Runs ``work`` in a new thread of this process named ``comm``; what it returned."""
    done: list[int] = []

    def named() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(_PR_SET_NAME, comm.encode(), 0, 0, 0) == 0
        done.append(work())

    thread = threading.Thread(target=named)
    thread.start()
    thread.join()
    (result,) = done
    return result


def test_an_excluded_name_is_marked_and_followed(sock_dir: Path, listener: str) -> None:
    """A thread named ``crictl`` (a default exclusion) is reported, marked, and followed like
    any other: only user space, knowing it is a host process, may drop it."""

    def client() -> int:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(listener)
            s.sendall(b"request")
            return s.fileno()

    me = os.getpid()
    with activity_probe(sock_dir, EVERY_SEND) as probe:  # the default exclusions
        excluded = _in_thread_named("crictl", client)
        plain = _in_thread_named("ocibpf-client", client)
        events = collect(probe, lambda evs: [k for k, _ in of(evs, me)].count("close") == 2)
    mine = [e for e in events if e.tgid == me]
    assert [(e.kind, e.fd, e.excluded) for e in mine] == [
        ("connect", excluded, True),
        ("send", excluded, False),
        ("close", excluded, False),
        ("connect", plain, False),
        ("send", plain, False),
        ("close", plain, False),
    ]
    assert [e.comm for e in mine if e.kind == "connect"] == ["crictl", "ocibpf-client"]


def test_the_ignored_process_is_neither_reported_nor_followed(
    sock_dir: Path, listener: str
) -> None:
    """Its connects (and so its sends) never reach user space; another process's do."""
    me = os.getpid()
    with activity_probe(sock_dir, EVERY_SEND, ignore_tgid=me) as probe:
        with socket.socket(socket.AF_UNIX) as mine:
            mine.connect(listener)
            mine.sendall(b"request")
        pid, _ = run_client(_CLIENT, listener)
        events = collect(probe, exited(pid))
    assert of(events, me) == []
    assert [kind for kind, _ in of(events, pid)] == ["connect"] + ["send"] * 4 + ["close", "exit"]
