"""The connect tracer's events, fed to the deprecation reporter as connections with lifetimes
and activity.

Each connect() to a unix socket becomes a ``Connection`` (its process named from ``/proc``: the
event's ``comm`` is the calling thread's, and gRPC's C core connects from a thread of its own,
``event_engine``, whatever the program). With the probe's lifetimes on, the socket's ``close``
(or a ``failed`` connect, or its process's ``exit``) ends it, so that a client keeping one
connection open is a candidate for every occurrence while it is open; with activity on, each
``send`` the probe reports on a followed connection tells the correlator when it sent a
request. The daemon's own connections (its deprecation poller's, its CRI client's, when they go
to the traced socket) are never a client's: their connects, sends and lifetimes are left out.

A close can be missed (the kernel's LRU map of open sockets evicted it, the ring buffer lost the
event): such a connection would stay open for ever. So the feed notes each connection's socket
inode at its connect (``/proc/<tgid>/fd/<fd>`` links to ``socket:[<inode>]``), and every
``sweep_interval`` (driven by the events' own times, so nobody has to call it) checks the
connections open for at least ``min_age``: when the process is gone, or the fd no longer holds
that socket, the connection is closed at the time of the check and counted (``aged_out``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Final

from ociresolve.deprecations.correlate import Connection
from ociresolve.deprecations.reporter import Reporter
from ociresolve.hostpaths import HostPaths
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.events import ConnectEvent

_NS: Final = 1_000_000_000
# Open connections followed at most (the oldest are forgotten: the correlator keeps them open).
MAX_OPEN: Final = 65_536
# Open connections checked against /proc per sweep at most (a readlink each, a few us): a
# round over every followed connection may take several sweeps.
SWEEP_BATCH: Final = 1024


class _Followed:
    """An open connection: its correlator handle, its socket's inode (``None``: unknown, its
    process or fd was gone when looked at) and its connect time (the events' clock)."""

    __slots__ = ("handle", "inode", "since_ns")

    def __init__(self, handle: int, inode: int | None, since_ns: int) -> None:
        self.handle = handle
        self.inode = inode
        self.since_ns = since_ns


class ReporterFeed:
    """``connected`` and ``lifetime`` are the tracer loop's observers (its thread only, and so
    is ``sweep``, which they call every ``sweep_interval`` seconds of the events' clock)."""

    def __init__(
        self,
        reporter: Reporter,
        wall_ns: Callable[[int], int],
        paths: HostPaths,
        *,
        sweep_interval: float = 10.0,
        min_age: float = 10.0,
    ) -> None:
        if sweep_interval <= 0 or min_age < 0:
            raise ValueError("the sweep interval must be positive, the minimum age not negative")
        self.reporter = reporter
        self.wall_ns = wall_ns  # an event's CLOCK_MONOTONIC time -> ns since the epoch
        self.paths = paths
        self._proc = _proc_root(paths)
        self.own_pid = own_tgid(paths)
        self.sweep_interval_ns = int(sweep_interval * _NS)
        self.min_age_ns = int(min_age * _NS)
        self.aged_out = 0  # connections closed by a sweep: their close was missed
        self._open: dict[tuple[int, int], _Followed] = {}  # (tgid, fd) -> its connection
        self._fds: dict[int, set[int]] = {}  # tgid -> its open fds
        self._next_sweep_ns: int | None = None
        self._unchecked: deque[tuple[int, int]] = deque()  # the rest of the sweeps' round

    def connected(self, event: ConnectEvent, who: Attribution) -> None:
        self._maybe_sweep(event.time_ns)
        if event.family != "unix" or event.tgid == self.own_pid:
            return
        meta = who.meta
        connect_ns = self.wall_ns(event.time_ns)
        handle = self.reporter.connected(
            Connection(
                connect_ns=connect_ns,
                pid=event.tgid,
                comm=self._process_name(event.tgid) or event.comm,
                pod_namespace=meta.pod_namespace if meta is not None else None,
                pod_name=meta.pod_name if meta is not None else None,
                container=meta.container_name if meta is not None else None,
                container_id=who.container_id,
            )
        )
        if handle is None or event.fd < 0:
            return
        key = (event.tgid, event.fd)
        previous = self._open.pop(key, None)
        if previous is not None:  # the fd was reused without a close we saw (dup2)
            self.reporter.closed(previous.handle, connect_ns)
        inode = self._socket_inode(event.tgid, event.fd)
        self._open[key] = _Followed(handle, inode, event.time_ns)
        self._fds.setdefault(event.tgid, set()).add(event.fd)
        if len(self._open) > MAX_OPEN:
            tgid, fd = next(iter(self._open))
            del self._open[tgid, fd]
            self._forget_fd(tgid, fd)

    def lifetime(self, event: ConnectEvent) -> None:
        self._maybe_sweep(event.time_ns)
        if event.tgid == self.own_pid:  # never followed; its sends are many: skip early
            return
        when = self.wall_ns(event.time_ns)
        if event.kind == "send":
            followed = self._open.get((event.tgid, event.fd))
            if followed is not None:
                self.reporter.sent(followed.handle, when)
            return
        if event.kind == "exit":
            for fd in self._fds.pop(event.tgid, ()):
                gone = self._open.pop((event.tgid, fd), None)
                if gone is not None:
                    self.reporter.closed(gone.handle, when)
            return
        gone = self._open.pop((event.tgid, event.fd), None)
        if gone is not None:
            self.reporter.closed(gone.handle, when)
            self._forget_fd(event.tgid, event.fd)

    def sweep(self, now_ns: int) -> int:
        """Check up to ``SWEEP_BATCH`` open connections at least ``min_age`` old (``now_ns``
        on the events' clock, CLOCK_MONOTONIC) against ``/proc``; close those whose socket is
        gone, at ``now_ns``. How many were closed."""
        if not self._unchecked:
            self._unchecked.extend(self._open)  # a new round
        closed = 0
        for _ in range(min(SWEEP_BATCH, len(self._unchecked))):
            key = self._unchecked.popleft()
            followed = self._open.get(key)
            if followed is None or now_ns - followed.since_ns < self.min_age_ns:
                continue  # ended meanwhile, or too young: its close may still be on its way
            if self._still_open(key, followed.inode):
                continue
            del self._open[key]
            self._forget_fd(*key)
            self.reporter.closed(followed.handle, self.wall_ns(now_ns))
            closed += 1
        self.aged_out += closed
        return closed

    def _maybe_sweep(self, now_ns: int) -> None:
        if self._next_sweep_ns is None:
            self._next_sweep_ns = now_ns + self.sweep_interval_ns
        elif now_ns >= self._next_sweep_ns:
            self._next_sweep_ns = now_ns + self.sweep_interval_ns
            self.sweep(now_ns)

    def _still_open(self, key: tuple[int, int], inode: int | None) -> bool:
        """Whether the fd still holds the connection's socket (a pid reused since holds
        another inode, or none). Unknown inode: any socket will do; cannot tell: open."""
        try:
            target = os.readlink(self._fd_path(*key))
        except FileNotFoundError:
            return False  # the process or its fd is gone
        except OSError:
            return True  # not ours to read (permissions): keep it
        if inode is None:
            return target.startswith("socket:[")
        return target == f"socket:[{inode}]"

    def _socket_inode(self, tgid: int, fd: int) -> int | None:
        try:
            target = os.readlink(self._fd_path(tgid, fd))
        except OSError:
            return None  # gone already: the close event will tell, or the sweep
        if not target.startswith("socket:[") or not target.endswith("]"):
            return None
        digits = target[len("socket:[") : -1]
        return int(digits) if digits.isdigit() else None

    def _fd_path(self, tgid: int, fd: int) -> str:
        return f"{self._proc}/{tgid}/fd/{fd}"

    def _forget_fd(self, tgid: int, fd: int) -> None:
        fds = self._fds.get(tgid)
        if fds is not None:
            fds.discard(fd)
            if not fds:
                del self._fds[tgid]

    def _process_name(self, pid: int) -> str | None:
        try:
            with open(self.paths.proc_comm(pid), "rb") as file:
                return file.read(64).decode(errors="replace").rstrip("\n") or None
        except OSError:
            return None  # exited already: the thread's name will do


def own_tgid(paths: HostPaths) -> int:
    """This process's tgid as the kernel's events carry it: in the host's PID namespace.

    On the node, and in a container with ``hostPID: true`` (which shares the host's PID
    namespace), that is ``os.getpid()``. In a container with a PID namespace of its own,
    ``os.getpid()`` is a number only that namespace knows; the host's ``/proc`` (mounted below
    the host root) resolves its ``self`` link to the host's number for this process.
    """
    try:
        return int(os.readlink(f"{_proc_root(paths)}/self"))
    except (OSError, ValueError):
        return os.getpid()


def _proc_root(paths: HostPaths) -> str:
    """The host's ``/proc`` as seen from here: the directory of a process's directory
    (``HostPaths`` names only per-process files)."""
    return os.path.dirname(os.path.dirname(paths.proc_comm(1)))
