"""Benchmark of the deprecation correlator's activity: what a reported send costs the tracer's
thread, what judging an occurrence costs the reporter's, side by side in one run.

    .venv/bin/python bench/correlate.py [--occurrences N]

No root, no containerd: synthetic connections and times.

* per reported send (the tracer's thread, up to one per connection per 5 ms):
  ``ReporterFeed.lifetime`` of a ``send`` event (the loop's observer: the feed's lookup, the
  reporter's lock, the correlator), ``Reporter.sent``, ``Correlator.sent``, next to a bare
  ``dict.get`` + ``deque.append`` (the least any bookkeeping of a send costs);
* per occurrence (the reporter's thread, at most one per poll per deprecation): ``occurred``
  with 3, 30 and 300 persistent connections each sending every 0.3-5 s, after 256 occurrences
  (the standings' history full), with the standings' re-estimation and without, and the
  fallback (the same connections, no send seen);
* the feed's ``readlink`` of ``/proc/<pid>/fd/<fd>``: once per connect (the socket's inode) and
  once per open connection per sweep round.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

from _timing import fmt, interleaved, median_seconds, row

from ociresolve.daemon.feed import ReporterFeed
from ociresolve.deprecations import correlate
from ociresolve.deprecations.correlate import Connection, Correlator, Settings
from ociresolve.deprecations.reporter import Reporter
from ociresolve.hostpaths import HostPaths
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.events import ConnectEvent

MS = 1_000_000
S = 1_000_000_000
T0 = 1_750_000_000 * S
V1ALPHA2 = "io.containerd.deprecation/cri-api-v1alpha2"


class NoSource:
    endpoint = "/run/containerd/containerd.sock"

    def deprecations(self) -> list[Any]:
        return []


def conn(k: int, at: int) -> Connection:
    return Connection(
        connect_ns=at,
        pid=1000 + k,
        comm="agent",
        pod_namespace="ns",
        pod_name=f"pod-{k}",
        container="main",
        container_id=f"{k:064x}",
    )


# -- per reported send ---------------------------------------------------------------------------


def bench_sends() -> None:
    print("per reported send (tracer's thread)")
    correlator = Correlator(Settings(closes_tracked=True))
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO(), correlator=correlator)
    empty_host = tempfile.mkdtemp()  # no /proc: the connects below read nothing
    # No sweep meanwhile (it would find no /proc entry and close them all): costed below.
    feed = ReporterFeed(reporter, lambda ns: ns + T0, HostPaths(empty_host), sweep_interval=1e9)
    os.rmdir(empty_host)
    for k in range(100):
        feed.connected(
            ConnectEvent(k, 1000 + k, 1000 + k, 7, "agent", "unix", "/x.sock", None, 5),
            Attribution(None, "host"),
        )
    handle = feed._open[1050, 5].handle
    clock = iter(range(10**12))
    event = ConnectEvent(0, 1050, 1050, 7, "", "unix", "", None, 5, "send")
    table = {k: collections.deque([0], maxlen=2048) for k in range(100)}

    def bare() -> None:
        table[50].append(next(clock))

    def through_correlator() -> None:
        correlator.sent(handle, T0 + next(clock) * 5 * MS)

    def through_reporter() -> None:
        reporter.sent(handle, T0 + next(clock) * 5 * MS)

    def through_feed() -> None:
        feed.lifetime(event._replace(time_ns=next(clock) * 5 * MS))

    def event_only() -> None:
        event._replace(time_ns=next(clock) * 5 * MS)

    floor, c, r, f, e = interleaved(
        bare, through_correlator, through_reporter, through_feed, event_only
    )
    print(row("dict.get + deque.append (floor)", floor))
    print(row("Correlator.sent", c, floor))
    print(row("Reporter.sent (lock + Correlator.sent)", r, floor))
    print(row("ReporterFeed.lifetime(send), less this bench's event", f - e, floor))


# -- per occurrence ------------------------------------------------------------------------------


def node_correlator(persistent: int, *, sends: bool, standings: bool, seed: int) -> Any:
    """A correlator after a node's first 256 occurrences, and a function judging the next one
    (its sends fed first, untimed); it returns the seconds ``occurred`` took."""
    rng = random.Random(seed)
    correlator = Correlator(Settings(closes_tracked=True, standings=standings), since_ns=T0)
    handles = [correlator.connected(conn(k, T0)) for k in range(persistent)]
    periods = [rng.randint(300, 5000) * MS for _ in handles]
    nexts = [T0 + rng.randint(0, period) for period in periods]
    state = {"t": T0}

    def step() -> float:
        t = state["t"] + 2 * S  # the caller (connection 0) calls every 2 s
        for k, handle in enumerate(handles):
            while nexts[k] < t:
                if sends:
                    correlator.sent(handle, nexts[k])
                nexts[k] += periods[k]
        if sends:
            correlator.sent(handles[0], t - 4 * MS)
        state["t"] = t
        start = time.perf_counter()
        correlator.occurred(V1ALPHA2, t)
        return time.perf_counter() - start

    for _ in range(256):
        step()
    return step


def bench_occurrences(occurrences: int) -> None:
    print(f"per occurrence (reporter's thread, under its lock; HISTORY {correlate.HISTORY})")
    for persistent in (3, 30, 300):
        cases = {
            "activity, standings": node_correlator(
                persistent, sends=True, standings=True, seed=persistent
            ),
            "activity, no standings": node_correlator(
                persistent, sends=True, standings=False, seed=persistent
            ),
            "fallback (no send seen)": node_correlator(
                persistent, sends=False, standings=True, seed=persistent
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(occurrences):  # interleaved, so that a noisy moment hits all
            for name, step in cases.items():
                samples[name].append(step())
        medians = {name: statistics.median(times) for name, times in samples.items()}
        base = medians["activity, no standings"]
        for name, median in medians.items():
            print(row(f"{persistent:>3} persistent connections: {name}", median, base))


# -- the feed's readlink ---------------------------------------------------------------------------


def bench_readlink() -> None:
    print("the feed's socket inode (a readlink of /proc/<pid>/fd/<fd>)")
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        fd = left.fileno()
        pid = os.getpid()
        feed = ReporterFeed(
            Reporter(NoSource(), node="n", stream=io.StringIO()),
            lambda ns: ns,
            HostPaths("/"),
        )
        inode = feed._socket_inode(pid, fd)
        assert inode is not None
        seconds = median_seconds(lambda: feed._socket_inode(pid, fd))
        gone = median_seconds(lambda: feed._socket_inode(pid, 10_000))
        print(row("ReporterFeed._socket_inode (a live socket)", seconds))
        print(row("ReporterFeed._socket_inode (no such fd)", gone))
        print(f"  a sweep round over 1,000 open connections: ~{fmt(seconds * 1000).strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occurrences", type=int, default=200, help="occurrences timed")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; medians")
    bench_sends()
    bench_occurrences(args.occurrences)
    bench_readlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
