"""The feed's activity, its sweep of missed closes, and the daemon's own process: ``send``
events reach the correlator for followed connections only; a connection whose socket is gone
from a fake ``/proc`` is closed at the sweep that finds it; the daemon's kernel tgid comes
from the host's ``/proc/self``."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from daemonfakes import fake_feed, wall

import ociresolve
from ociresolve.daemon import feed as feed_module
from ociresolve.daemon.feed import ReporterFeed, own_tgid
from ociresolve.deprecations.correlate import Correlator, Settings
from ociresolve.deprecations.reporter import Reporter
from ociresolve.hostpaths import HostPaths
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.events import ConnectEvent, Kind

S = 1_000_000_000
MS = 1_000_000
SOCKET = "/run/containerd/containerd.sock"
V1ALPHA2 = "io.containerd.deprecation/cri-api-v1alpha2"

META = ociresolve.ContainerMeta(
    runtime="containerd",
    container_type="container",
    container_id="c" * 64,
    pod_name="agent-7f9c",
    pod_namespace="legacy",
    container_name="agent",
)
IN_POD = Attribution(META, "index", META.container_id)
HOST = Attribution(None, "host")


def connect(tgid: int, fd: int, at: int) -> ConnectEvent:
    return ConnectEvent(at, tgid, tgid + 1, 77, "event_engine", "unix", SOCKET, None, fd)


def event(kind: Kind, tgid: int, fd: int, at: int) -> ConnectEvent:
    return ConnectEvent(at, tgid, tgid + 2, 77, "", "unix", "", None, fd, kind)


def socket_fd(host: Path, tgid: int, fd: int, target: str) -> None:
    """``<host>/proc/<tgid>/fd/<fd>``, a link to ``target`` (``socket:[N]``, a file...)."""
    fds = host / "proc" / str(tgid) / "fd"
    fds.mkdir(parents=True, exist_ok=True)
    link = fds / str(fd)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)


class NoSource:
    endpoint = SOCKET

    def deprecations(self) -> list[Any]:
        return []


# -- send events --------------------------------------------------------------------------------


def test_sends_of_followed_connections_reach_the_reporter(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)  # 100
    feed.connected(connect(20, 5, 1 * S), HOST)  # 101
    feed.lifetime(event("send", 10, 5, 2 * S))
    feed.lifetime(event("send", 20, 5, 3 * S))
    feed.lifetime(event("send", 10, 6, 3 * S))  # never connected: nothing
    feed.lifetime(event("close", 10, 5, 4 * S))
    feed.lifetime(event("send", 10, 5, 5 * S))  # after its close: nothing
    assert reporter.sends == [(100, wall(2 * S)), (101, wall(3 * S))]
    assert reporter.closes == [(100, wall(4 * S))]


def test_the_daemons_own_sends_and_lifetimes_are_skipped(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    own = feed.own_pid
    feed.connected(connect(own, 5, 1 * S), HOST)
    feed.lifetime(event("send", own, 5, 2 * S))
    feed.lifetime(event("close", own, 5, 3 * S))
    feed.lifetime(event("exit", own, -1, 4 * S))
    assert reporter.connections == reporter.sends == reporter.closes == []
    assert feed._open == {} and feed._fds == {}


def test_the_kernel_tgid_of_the_daemon_comes_from_the_hosts_proc(tmp_path: Path) -> None:
    """In a container with a PID namespace of its own, the host's /proc names the daemon by
    its host PID; on the node or with hostPID: true, it is ``os.getpid()``."""
    assert own_tgid(HostPaths(str(tmp_path))) == os.getpid()  # no self link: this process
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "self").symlink_to("4242")
    feed, reporter = fake_feed(tmp_path)
    assert feed.own_pid == 4242
    feed.connected(connect(4242, 5, 1 * S), HOST)
    feed.lifetime(event("send", 4242, 5, 2 * S))
    assert reporter.connections == reporter.sends == []
    (tmp_path / "proc" / "self").unlink()
    (tmp_path / "proc" / "self").symlink_to("not-a-pid")
    assert own_tgid(HostPaths(str(tmp_path))) == os.getpid()
    assert own_tgid(HostPaths("/")) == os.getpid()  # the real /proc, from the node itself


def test_sends_make_the_real_correlator_judge_by_activity(tmp_path: Path) -> None:
    """Two persistent connections open since before the calls: the one that sent just before
    the occurrence takes it whole, where lifetimes alone would split it."""
    correlator = Correlator(Settings(closes_tracked=True))
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO(), correlator=correlator)
    feed = ReporterFeed(reporter, wall, HostPaths(str(tmp_path)))
    feed.connected(connect(10, 5, 1 * S), IN_POD)
    feed.connected(connect(20, 5, 1 * S), HOST)
    feed.lifetime(event("send", 20, 5, 1 * S + 1 * MS))  # the other's preface, long before
    feed.lifetime(event("send", 10, 5, 9 * S))
    evidence = correlator.occurred(V1ALPHA2, wall(9 * S + 4 * MS))
    assert evidence.active
    assert [(c.identity.pod, c.share) for c in evidence.candidates] == [("legacy/agent-7f9c", 1.0)]


# -- the sweep of missed closes -------------------------------------------------------------------


def test_the_socket_inode_is_noted_at_the_connect(tmp_path: Path) -> None:
    socket_fd(tmp_path, 10, 5, "socket:[777]")
    socket_fd(tmp_path, 11, 5, "/var/log/some.log")
    socket_fd(tmp_path, 12, 5, "socket:[12x]")
    feed, _ = fake_feed(tmp_path)
    for tgid in (10, 11, 12, 13):  # 13: gone already
        feed.connected(connect(tgid, 5, 1 * S), IN_POD)
    assert {key[0]: f.inode for key, f in feed._open.items()} == {
        10: 777,
        11: None,
        12: None,
        13: None,
    }


def test_a_sweep_closes_the_connections_whose_socket_is_gone(tmp_path: Path) -> None:
    socket_fd(tmp_path, 10, 5, "socket:[701]")  # still there: kept
    socket_fd(tmp_path, 20, 5, "socket:[702]")  # its process exits, the exit event is lost
    socket_fd(tmp_path, 30, 5, "socket:[703]")  # its fd reused for another socket
    socket_fd(tmp_path, 40, 5, "socket:[704]")  # its fd reused for a file
    socket_fd(tmp_path, 50, 5, "socket:[705]")  # its fd closed, the close event lost
    feed, reporter = fake_feed(tmp_path)
    for tgid in (10, 20, 30, 40, 50):
        feed.connected(connect(tgid, 5, 1 * S), IN_POD)  # 100 .. 104
    for tgid in (20, 50):
        (tmp_path / "proc" / str(tgid) / "fd" / "5").unlink()
    (tmp_path / "proc" / "20" / "fd").rmdir()
    (tmp_path / "proc" / "20").rmdir()
    socket_fd(tmp_path, 30, 5, "socket:[999]")
    socket_fd(tmp_path, 40, 5, "/data/file")
    assert feed.sweep(30 * S) == 4
    assert sorted(reporter.closes) == [(h, wall(30 * S)) for h in (101, 102, 103, 104)]
    assert feed.aged_out == 4
    assert list(feed._open) == [(10, 5)] and feed._fds == {10: {5}}
    assert feed.sweep(40 * S) == 0 and feed.aged_out == 4


def test_an_unknown_inode_is_kept_while_the_fd_holds_a_socket(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)  # its fd not there yet: inode unknown
    feed.connected(connect(20, 5, 1 * S), IN_POD)
    socket_fd(tmp_path, 10, 5, "socket:[5]")
    socket_fd(tmp_path, 20, 5, "anon_inode:[eventfd]")
    assert feed.sweep(30 * S) == 1
    assert reporter.closes == [(101, wall(30 * S))]


def test_young_connections_are_not_checked(tmp_path: Path) -> None:
    """A connection younger than ``min_age`` may have its close event still on its way."""
    feed, reporter = fake_feed(tmp_path, min_age=10.0)
    feed.connected(connect(10, 5, 25 * S), IN_POD)  # no /proc entry: gone
    assert feed.sweep(30 * S) == 0
    assert feed.sweep(36 * S) == 1
    assert reporter.closes == [(100, wall(36 * S))]


def test_an_unreadable_fd_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)

    def denied(path: str) -> str:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(feed_module.os, "readlink", denied)
    assert feed.sweep(30 * S) == 0 and reporter.closes == []


def test_the_events_drive_the_sweeps(tmp_path: Path) -> None:
    """Nobody calls ``sweep``: the events do, every ``sweep_interval`` of their own clock."""
    feed, reporter = fake_feed(tmp_path, sweep_interval=10.0, min_age=5.0)
    feed.connected(connect(10, 5, 1 * S), IN_POD)  # gone from /proc: a missed close
    feed.connected(connect(20, 5, 2 * S), HOST)
    socket_fd(tmp_path, 20, 5, "socket:[1]")
    feed._open[20, 5].inode = 1
    feed.lifetime(event("send", 20, 5, 10 * S))
    assert reporter.closes == []  # the first sweep is due at 11 s
    feed.lifetime(event("send", 20, 5, 11 * S))
    assert reporter.closes == [(100, wall(11 * S))]
    feed.connected(connect(30, 5, 12 * S), HOST)  # gone too, but the next sweep is at 21 s
    feed.lifetime(event("close", 99, 9, 20 * S))
    assert len(reporter.closes) == 1
    feed.lifetime(event("exit", 99, -1, 21 * S))  # an event of nobody followed still counts
    assert reporter.closes[1:] == [(102, wall(21 * S))]
    assert feed.aged_out == 2


def test_a_sweep_checks_a_batch_and_the_next_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "SWEEP_BATCH", 2)
    feed, reporter = fake_feed(tmp_path)
    for tgid in range(10, 15):
        feed.connected(connect(tgid, 5, 1 * S), IN_POD)  # all gone
    assert [feed.sweep(30 * S), feed.sweep(40 * S), feed.sweep(50 * S)] == [2, 2, 1]
    assert [handle for handle, _ in reporter.closes] == [100, 101, 102, 103, 104]
    assert feed._open == {} and feed.sweep(60 * S) == 0


def test_a_missed_close_stops_taking_shares_once_swept(tmp_path: Path) -> None:
    """With lifetimes, an open connection whose close was missed would be a candidate for
    ever; once swept, the connection that is really open takes the occurrence."""
    correlator = Correlator(Settings(closes_tracked=True))
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO(), correlator=correlator)
    feed = ReporterFeed(reporter, wall, HostPaths(str(tmp_path)))
    socket_fd(tmp_path, 10, 5, "socket:[10]")
    socket_fd(tmp_path, 20, 5, "socket:[20]")
    feed.connected(connect(10, 5, 1 * S), IN_POD)
    feed.connected(connect(20, 5, 1 * S), HOST)
    (tmp_path / "proc" / "20" / "fd" / "5").unlink()  # closed; its close event lost
    before = correlator.occurred(V1ALPHA2, wall(20 * S))
    assert {c.identity.pod for c in before.candidates} == {"legacy/agent-7f9c", None}
    assert feed.sweep(25 * S) == 1
    after = correlator.occurred(V1ALPHA2, wall(30 * S))
    assert [(c.identity.pod, c.share) for c in after.candidates] == [("legacy/agent-7f9c", 1.0)]


def test_bad_sweep_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sweep"):
        fake_feed(tmp_path, sweep_interval=0)
    with pytest.raises(ValueError, match="minimum age"):
        fake_feed(tmp_path, min_age=-1)
