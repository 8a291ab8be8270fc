"""The connect tracer's events, fed to the deprecation reporter as connections with lifetimes.

Each connect() to a unix socket becomes a ``Connection`` (its process named from ``/proc``: the
event's ``comm`` is the calling thread's, and gRPC's C core connects from a thread of its own,
``event_engine``, whatever the program). With the probe's lifetimes on, the socket's ``close``
(or a ``failed`` connect, or its process's ``exit``) ends it, so that a client keeping one
connection open is a candidate for every occurrence while it is open. The daemon's own
connections (its deprecation poller's, its CRI client's, when they go to the traced socket)
are never a client's: left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from ociresolve.deprecations.correlate import Connection
from ociresolve.deprecations.reporter import Reporter
from ociresolve.hostpaths import HostPaths
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.events import ConnectEvent

# Open connections followed at most (the oldest are forgotten: the correlator keeps them open).
MAX_OPEN: Final = 65_536


class ReporterFeed:
    """``connected`` and ``lifetime`` are the tracer loop's observers (its thread only)."""

    def __init__(self, reporter: Reporter, wall_ns: Callable[[int], int], paths: HostPaths) -> None:
        self.reporter = reporter
        self.wall_ns = wall_ns  # an event's CLOCK_MONOTONIC time -> ns since the epoch
        self.paths = paths
        self.own_pid = os.getpid()  # the kernel's tgid of this process (host PID namespace)
        self._open: dict[tuple[int, int], int] = {}  # (tgid, fd) -> correlator handle
        self._fds: dict[int, set[int]] = {}  # tgid -> its open fds

    def connected(self, event: ConnectEvent, who: Attribution) -> None:
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
            self.reporter.closed(previous, connect_ns)
        self._open[key] = handle
        self._fds.setdefault(event.tgid, set()).add(event.fd)
        if len(self._open) > MAX_OPEN:
            tgid, fd = next(iter(self._open))
            del self._open[tgid, fd]
            self._forget_fd(tgid, fd)

    def lifetime(self, event: ConnectEvent) -> None:
        when = self.wall_ns(event.time_ns)
        if event.kind == "exit":
            for fd in self._fds.pop(event.tgid, ()):
                handle = self._open.pop((event.tgid, fd), None)
                if handle is not None:
                    self.reporter.closed(handle, when)
            return
        handle = self._open.pop((event.tgid, event.fd), None)
        if handle is not None:
            self.reporter.closed(handle, when)
            self._forget_fd(event.tgid, event.fd)

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
