"""The tracer's events fed to the deprecation reporter: connect events become connections,
lifetime events (``close``, ``failed``, ``exit``) end them; the process named from /proc."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from daemonfakes import fake_feed, wall

import ociresolve
from ociresolve.daemon import feed as feed_module
from ociresolve.daemon.feed import ReporterFeed
from ociresolve.deprecations.correlate import Connection, Correlator, Identity, Settings
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
    pod_name="collector-7f9c",
    pod_namespace="legacy",
    container_name="collector",
)
IN_POD = Attribution(META, "index", META.container_id)
HOST = Attribution(None, "host")


def connect(
    tgid: int, fd: int, at: int, *, comm: str = "event_engine", family: str = "unix"
) -> ConnectEvent:
    address = SOCKET if family == "unix" else "10.0.0.1:443"
    port = None if family == "unix" else 443
    return ConnectEvent(at, tgid, tgid + 1, 77, comm, family, address, port, fd)  # type: ignore[arg-type]


def lifetime(kind: Kind, tgid: int, fd: int, at: int) -> ConnectEvent:
    return ConnectEvent(at, tgid, tgid, 0, "", "other", "", None, fd, kind)


def write_comm(host: Path, pid: int, text: str) -> None:
    (host / "proc" / str(pid)).mkdir(parents=True, exist_ok=True)
    (host / "proc" / str(pid) / "comm").write_text(text)


class NoSource:
    endpoint = "/run/containerd/containerd.sock"

    def deprecations(self) -> list[Any]:
        return []


def real_feed(host: Path) -> tuple[ReporterFeed, Correlator]:
    correlator = Correlator(Settings(closes_tracked=True))
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO(), correlator=correlator)
    return ReporterFeed(reporter, wall, HostPaths(str(host))), correlator


# -- with the real reporter and correlator ------------------------------------------------------


def test_a_connect_then_its_close_gives_the_correlator_that_lifetime(tmp_path: Path) -> None:
    feed, correlator = real_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)
    feed.lifetime(lifetime("close", 10, 5, 1 * S + 30 * MS))
    assert len(correlator) == 1
    # During its lifetime (and the slack): a candidate; long after its close: none.
    during = correlator.occurred(V1ALPHA2, wall(1 * S + 20 * MS))
    assert [(c.identity.pod_name, c.share) for c in during.candidates] == [("collector-7f9c", 1.0)]
    after = correlator.occurred(V1ALPHA2, wall(3 * S))
    assert after.candidates == () and correlator.unexplained(V1ALPHA2) == 1


def test_an_open_connection_is_a_candidate_long_after_its_connect(tmp_path: Path) -> None:
    """With closes tracked, a connection not yet closed can carry a call any time later: a
    client keeping one channel open is named for each of its calls."""
    feed, correlator = real_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)
    feed.connected(connect(20, 7, 2 * S), HOST)  # another process, per call: closed soon
    feed.lifetime(lifetime("close", 20, 7, 2 * S + 20 * MS))
    for k in range(1, 11):
        evidence = correlator.occurred(V1ALPHA2, wall(1 * S + k * 2 * S + 500 * MS))
        assert [c.identity.pod_name for c in evidence.candidates] == ["collector-7f9c"]
    (standing,) = correlator.attributions(V1ALPHA2)
    assert standing.identity == Identity("legacy", "collector-7f9c", "collector", "event_engine")
    assert standing.occurrences == 10 and standing.confidence == pytest.approx(10 / 11)
    assert standing.pid == 10 and standing.container_id == META.container_id


def test_an_exit_ends_the_connections_of_its_process_only(tmp_path: Path) -> None:
    feed, correlator = real_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)
    feed.connected(connect(10, 6, 1 * S + 10 * MS), IN_POD)
    feed.connected(connect(20, 5, 1 * S + 20 * MS), HOST)
    feed.lifetime(lifetime("exit", 10, -1, 2 * S))
    evidence = correlator.occurred(V1ALPHA2, wall(5 * S))
    # Only the other process's connection is still open.
    assert [c.identity.pod for c in evidence.candidates] == [None]


def test_without_a_correlator_nothing_is_followed(tmp_path: Path) -> None:
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO())
    feed = ReporterFeed(reporter, wall, HostPaths(str(tmp_path)))
    feed.connected(connect(10, 5, 1 * S), IN_POD)
    feed.lifetime(lifetime("close", 10, 5, 2 * S))
    feed.lifetime(lifetime("exit", 10, -1, 3 * S))
    assert feed._open == {} and feed._fds == {}


# -- what the feed tells the reporter -----------------------------------------------------------


def test_connections_carry_the_pod_the_wall_time_and_the_pid(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 3 * S), IN_POD)
    feed.connected(connect(11, 5, 4 * S, comm="crictl"), HOST)
    pod, host = reporter.connections
    assert pod == Connection(
        connect_ns=wall(3 * S),
        pid=10,
        comm="event_engine",  # no /proc entry for it here
        pod_namespace="legacy",
        pod_name="collector-7f9c",
        container="collector",
        container_id=META.container_id,
    )
    assert host.pod_namespace is host.pod_name is host.container is host.container_id is None
    assert (host.comm, host.pid, host.close_ns) == ("crictl", 11, None)


def test_close_and_failed_end_the_connection_of_that_fd(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)  # handle 100
    feed.connected(connect(10, 6, 2 * S), IN_POD)  # handle 101
    feed.connected(connect(11, 5, 2 * S), IN_POD)  # handle 102: same fd, other process
    feed.lifetime(lifetime("failed", 10, 6, 2 * S + 1 * MS))
    feed.lifetime(lifetime("close", 10, 5, 3 * S))
    feed.lifetime(lifetime("close", 10, 5, 4 * S))  # already ended: nothing
    feed.lifetime(lifetime("close", 10, 9, 4 * S))  # never connected: nothing
    assert reporter.closes == [(101, wall(2 * S + 1 * MS)), (100, wall(3 * S))]
    feed.lifetime(lifetime("exit", 11, -1, 5 * S))
    assert reporter.closes[2:] == [(102, wall(5 * S))]
    assert feed._open == {} and feed._fds == {}


def test_exit_ends_every_open_connection_of_its_process(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    for fd in (5, 6, 7):
        feed.connected(connect(10, fd, fd * S), IN_POD)  # handles 100-102
    feed.connected(connect(20, 5, 8 * S), HOST)  # handle 103
    feed.lifetime(lifetime("close", 10, 6, 9 * S))
    feed.lifetime(lifetime("exit", 10, -1, 10 * S))
    assert sorted(reporter.closes) == [
        (100, wall(10 * S)),
        (101, wall(9 * S)),
        (102, wall(10 * S)),
    ]
    feed.lifetime(lifetime("exit", 10, -1, 11 * S))  # twice: nothing more
    feed.lifetime(lifetime("exit", 30, -1, 11 * S))  # a process never seen
    assert len(reporter.closes) == 3
    assert list(feed._open) == [(20, 5)] and feed._fds == {20: {5}}


def test_an_fd_connected_again_without_a_close_ends_the_previous_connection(
    tmp_path: Path,
) -> None:
    """A close the feed never saw (dup2 over it, a lost event): the new connect on the same fd
    ends the old connection then."""
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)  # 100
    feed.connected(connect(10, 5, 4 * S), IN_POD)  # 101
    assert reporter.closes == [(100, wall(4 * S))]
    feed.lifetime(lifetime("close", 10, 5, 6 * S))
    assert reporter.closes == [(100, wall(4 * S)), (101, wall(6 * S))]


def test_other_families_and_their_lifetimes_are_ignored(tmp_path: Path) -> None:
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S, family="inet"), HOST)
    feed.connected(connect(10, 6, 1 * S, family="inet6"), HOST)
    feed.lifetime(lifetime("close", 10, 5, 2 * S))
    feed.lifetime(lifetime("failed", 10, 6, 2 * S))
    feed.lifetime(lifetime("exit", 10, -1, 3 * S))
    assert reporter.connections == [] and reporter.closes == []
    assert feed._open == {} and feed._fds == {}


def test_a_connect_without_an_fd_is_not_followed(tmp_path: Path) -> None:
    """A probe without lifetimes (fd -1 in older events): the connection is fed, nothing kept."""
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, -1, 1 * S), IN_POD)
    feed.lifetime(lifetime("exit", 10, -1, 2 * S))
    assert len(reporter.connections) == 1 and reporter.closes == []
    assert feed._open == {} and feed._fds == {}


# -- the process's name -------------------------------------------------------------------------


def test_the_process_name_from_proc_overrides_the_thread_name(tmp_path: Path) -> None:
    write_comm(tmp_path, 10, "collector\n")
    write_comm(tmp_path, 12, "")  # empty: the thread's name will do
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S, comm="event_engine"), IN_POD)
    feed.connected(connect(11, 5, 1 * S, comm="default-executo"), IN_POD)  # exited: no entry
    feed.connected(connect(12, 5, 1 * S, comm="grpc_global_tim"), IN_POD)
    assert [c.comm for c in reporter.connections] == [
        "collector",
        "default-executo",
        "grpc_global_tim",
    ]


def test_a_process_name_with_undecodable_bytes(tmp_path: Path) -> None:
    (tmp_path / "proc" / "10").mkdir(parents=True)
    (tmp_path / "proc" / "10" / "comm").write_bytes(b"bad\xffname\n")
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), HOST)
    assert reporter.connections[0].comm == "bad\ufffdname"


# -- bounds -------------------------------------------------------------------------------------


def test_at_most_max_open_connections_are_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "MAX_OPEN", 3)
    feed, reporter = fake_feed(tmp_path)
    feed.connected(connect(10, 5, 1 * S), IN_POD)  # 100: forgotten when the 4th comes
    feed.connected(connect(10, 6, 2 * S), IN_POD)  # 101
    feed.connected(connect(20, 5, 3 * S), HOST)  # 102
    feed.connected(connect(30, 5, 4 * S), HOST)  # 103
    assert len(feed._open) == 3
    assert list(feed._open) == [(10, 6), (20, 5), (30, 5)]
    assert feed._fds == {10: {6}, 20: {5}, 30: {5}}
    # The forgotten one's close is not passed on (the correlator keeps it open); the others'
    # are.
    feed.lifetime(lifetime("close", 10, 5, 5 * S))
    feed.lifetime(lifetime("exit", 10, -1, 6 * S))
    assert reporter.closes == [(101, wall(6 * S))]
    # A process whose only followed connection was forgotten leaves nothing behind.
    feed.connected(connect(40, 5, 7 * S), HOST)  # 104
    feed.connected(connect(50, 5, 8 * S), HOST)  # 105: forgets (20, 5)
    assert list(feed._open) == [(30, 5), (40, 5), (50, 5)]
    assert 20 not in feed._fds
    feed.lifetime(lifetime("exit", 20, -1, 9 * S))
    assert reporter.closes == [(101, wall(6 * S))]


def test_max_open_is_large() -> None:
    assert feed_module.MAX_OPEN >= 10_000


def test_the_feed_runs_beside_the_reporter_thread(tmp_path: Path) -> None:
    """connected/closed from the tracer's thread while the reporter reads its standings."""
    feed, correlator = real_feed(tmp_path)
    reporter = feed.reporter
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                reporter.clients()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(2000):
            feed.connected(connect(10 + k % 7, k % 50, k * MS), IN_POD)
            feed.lifetime(lifetime("close", 10 + k % 7, k % 50, k * MS + 1))
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert feed._open == {} and feed._fds == {}
    assert len(correlator) == 2000


def test_a_per_call_connection_that_ended_before_the_call_does_not_share_it_equally(
    tmp_path: Path,
) -> None:
    """A client connecting per call (connect, call, close: ~2 ms over a unix socket) and an
    innocent whose own 2 ms connection ended 48 ms before the occurrence. Without closes (the
    exponential model) the client gets 0.87; with closes tracked, both lifetimes are tiny next to
    the 2 x 50 ms slack, so the innocent inside the slack gets as much as the caller."""
    feed, correlator = real_feed(tmp_path)
    t = 10 * S
    feed.connected(connect(10, 5, t - 2 * MS), IN_POD)
    feed.connected(connect(20, 5, t - 50 * MS), HOST)
    feed.lifetime(lifetime("close", 20, 5, t - 48 * MS))
    feed.lifetime(lifetime("close", 10, 5, t))
    evidence = correlator.occurred(V1ALPHA2, wall(t))
    shares = {c.identity.pod: c.share for c in evidence.candidates}
    assert shares["legacy/collector-7f9c"] > 0.8, shares


def test_the_daemons_own_connections_are_never_candidates(tmp_path: Path) -> None:
    """The daemon polls the socket it traces (introspection, CRI): its own process is no
    client, whatever thread connects; another process is."""
    feed, reporter = fake_feed(tmp_path)
    own = feed.own_pid
    feed.connected(connect(own, 5, 1 * S, comm="default-executo"), HOST)
    feed.lifetime(lifetime("close", own, 5, 2 * S))
    assert reporter.connections == [] and reporter.closes == []
    feed.connected(connect(own + 1, 5, 3 * S), IN_POD)
    assert [c.pid for c in reporter.connections] == [own + 1]
