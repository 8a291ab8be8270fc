"""What the kernel side reports for one connect() call."""

from __future__ import annotations

from typing import Literal, NamedTuple

Family = Literal["unix", "inet", "inet6", "other"]
# ``connect``: a connect() call; with lifetimes on, what became of its socket: ``failed`` (the
# connect returned an error), ``close`` (closed), ``exit`` (its process exited: every socket
# of ``tgid`` it still held is closed).
Kind = Literal["connect", "failed", "close", "exit"]


class ConnectEvent(NamedTuple):
    """One connect() call that passed the in-kernel filters.

    ``time_ns`` is ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC); ``cgroup_id`` is
    ``bpf_get_current_cgroup_id()``, the inode of the caller's cgroup v2 directory; ``comm`` the
    thread's name (untrusted: any process can set its own); ``address`` the unix socket path, or
    ``ip:port`` / ``[ip6]:port``; ``port`` is ``None`` for unix sockets.
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
