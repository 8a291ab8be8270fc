"""What the kernel side reports for one connect() call, and (with lifetimes) for its socket."""

from __future__ import annotations

from typing import Literal, NamedTuple

Family = Literal["unix", "inet", "inet6", "other"]
# ``connect``: a connect() call; with lifetimes on, what became of its socket: ``failed`` (the
# connect returned an error), ``close`` (closed), ``exit`` (its process exited: every socket
# of ``tgid`` it still held is closed); with activity on, ``send`` (the socket sent something).
Kind = Literal["connect", "failed", "close", "exit", "send"]


class ConnectEvent(NamedTuple):
    """One connect() call that passed the in-kernel filters, or what became of its socket.

    ``time_ns`` is ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC); ``cgroup_id`` is
    ``bpf_get_current_cgroup_id()``, the inode of the caller's cgroup v2 directory; ``comm`` the
    thread's name (untrusted: any process can set its own); ``address`` the unix socket path, or
    ``ip:port`` / ``[ip6]:port``; ``port`` is ``None`` for unix sockets.

    ``failed``, ``close`` and ``exit`` carry only ``time_ns``, ``tgid``, ``tid`` and ``fd``.
    ``send`` names the followed connection by its connect's ``tgid`` and ``fd`` (a child that
    inherited the socket sends under its parent's key); ``tid`` and ``cgroup_id`` are the
    sender's, ``family`` is ``unix``, ``comm`` and ``address`` are empty.

    ``excluded``: a connect whose thread name is on the exclude list; the kernel reports it
    anyway (a process in a container may take any name), and the tracer drops it only when the
    caller turns out to be a host process.
    """

    time_ns: int
    tgid: int
    tid: int
    cgroup_id: int
    comm: str
    family: Family
    address: str
    port: int | None
    fd: int = -1
    kind: Kind = "connect"
    excluded: bool = False
