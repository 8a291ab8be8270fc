"""The poll loop with a fake probe: every event written as it comes, dedup, summaries."""

from __future__ import annotations

import io
import json
import threading

from tracerfakes import FakeProbe, event

import ociresolve
from ociresolve.tracer.attribution import Attribution
from ociresolve.tracer.dedup import Dedup
from ociresolve.tracer.events import ConnectEvent
from ociresolve.tracer.loop import TraceLoop
from ociresolve.tracer.output import JsonOutput, WallClock

META = ociresolve.ContainerMeta(
    runtime="containerd",
    container_type="container",
    container_id="a" * 64,
    pod_name="web",
    pod_namespace="shop",
    container_name="app",
)
CONTAINER_CGROUP, HOST_CGROUP, GONE_CGROUP = 5000, 1, 6000
SECOND = 1_000_000_000


class FakeAttributor:
    def attribute(self, event: ConnectEvent) -> Attribution:
        if event.cgroup_id == CONTAINER_CGROUP:
            return Attribution(META, "index", META.container_id)
        if event.cgroup_id == HOST_CGROUP:
            return Attribution(None, "host")
        return Attribution(None, "unresolved")


class Ticks:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    batches: list[list[ConnectEvent]], *, dedup: float = 0, interval: float = 0, lost: int = 0
) -> tuple[list[dict[str, object]], FakeProbe]:
    stop = threading.Event()
    probe = FakeProbe(batches, stop=stop, lost=lost)
    probe.start()
    out = io.StringIO()
    loop = TraceLoop(
        probe,
        FakeAttributor(),  # type: ignore[arg-type]
        JsonOutput(out, "node-1", WallClock(0)),
        dedup=Dedup(dedup) if dedup else None,
        summary_interval=interval,
    )
    loop.run(stop)
    return [json.loads(line) for line in out.getvalue().splitlines()], probe


def test_every_event_then_a_final_summary() -> None:
    rows, probe = run(
        [
            [event(cgroup_id=CONTAINER_CGROUP), event(cgroup_id=HOST_CGROUP)],
            [],
            [event(cgroup_id=GONE_CGROUP)],
        ],
        lost=2,
    )
    assert [r.get("source") for r in rows] == ["index", "host", "unresolved", None]
    assert rows[0]["pod_name"] == "web"
    final = rows[-1]
    assert final["msg"] == "containerd socket tracer stopped"
    assert (final["events"], final["resolved"], final["host"], final["unresolved"]) == (3, 1, 1, 1)
    assert final["lost"] == 2 and final["suppressed"] == 0
    # Batches of 5 ms polls; once stopped, one last non-blocking poll drains the buffer.
    assert probe.polls[:-1] == [5] * (len(probe.polls) - 1) and probe.polls[-1] == 0


def test_each_line_is_flushed_before_the_next_event_is_resolved() -> None:
    stop = threading.Event()
    flushed: list[int] = []

    class Stream(io.StringIO):
        def flush(self) -> None:
            flushed.append(self.getvalue().count("\n"))

    class Counting(FakeAttributor):
        def attribute(self, event: ConnectEvent) -> Attribution:
            assert len(flushed) == event.tgid  # every earlier line already out
            return super().attribute(event)

    probe = FakeProbe([[event(tgid=0), event(tgid=1), event(tgid=2)]], stop=stop)
    probe.start()
    out = Stream()
    TraceLoop(probe, Counting(), JsonOutput(out, "n", WallClock(0))).run(stop)  # type: ignore[arg-type]
    assert flushed[:3] == [1, 2, 3]


def test_dedup_suppresses_repeats_within_the_window() -> None:
    same = {"tgid": 10, "cgroup_id": CONTAINER_CGROUP}
    rows, _ = run(
        [
            [event(time_ns=1 * SECOND, **same), event(time_ns=2 * SECOND, **same)],
            [
                event(time_ns=3 * SECOND, tgid=11, cgroup_id=CONTAINER_CGROUP),  # another pid
                event(time_ns=3 * SECOND, address="/other.sock", **same),  # another address
                event(time_ns=11 * SECOND, **same),  # the window (from 1 s) is over
                event(time_ns=12 * SECOND, **same),
            ],
        ],
        dedup=10,
    )
    events = [r for r in rows if r["msg"] == "containerd socket connection opened"]
    assert [(r["pid"], r["address"], r["time"][17:23]) for r in events] == [
        (10, "/run/containerd/containerd.sock", "01.000"),
        (11, "/run/containerd/containerd.sock", "03.000"),
        (10, "/other.sock", "03.000"),
        (10, "/run/containerd/containerd.sock", "11.000"),
    ]
    final = rows[-1]
    assert (final["events"], final["suppressed"], final["resolved"]) == (6, 2, 6)


def test_dedup_table_forgets_expired_keys() -> None:
    dedup = Dedup(1)
    for pid in range(100):
        assert not dedup.repeat((pid, None, "/s"), 0)
    assert dedup.repeat((5, None, "/s"), SECOND - 1)
    dedup.expire(2 * SECOND)
    assert len(dedup) == 0


def test_periodic_summaries() -> None:
    stop = threading.Event()
    ticks = Ticks()

    class Probe(FakeProbe):
        def poll(self, timeout_ms: int) -> list[ConnectEvent]:
            ticks.now += 25  # each poll "takes" 25 s
            return super().poll(timeout_ms)

    probe = Probe([[event(cgroup_id=CONTAINER_CGROUP)], [], [], [], []], stop=stop)
    probe.start()
    out = io.StringIO()
    TraceLoop(
        probe,
        FakeAttributor(),  # type: ignore[arg-type]
        JsonOutput(out, "n", WallClock(0)),
        summary_interval=60,
        clock=ticks,
    ).run(stop)
    msgs = [json.loads(line)["msg"] for line in out.getvalue().splitlines()]
    assert msgs == [
        "containerd socket connection opened",
        "containerd socket tracer summary",  # at 75 s
        "containerd socket tracer summary",  # at 150 s
        "containerd socket tracer stopped",
    ]


def test_lifetime_events_go_to_the_lifetime_observer_only() -> None:
    """``close``, ``failed`` and ``exit`` events: passed on in order, never attributed, counted,
    deduplicated or written."""
    stop = threading.Event()
    connect = event(tgid=10, cgroup_id=CONTAINER_CGROUP, time_ns=1 * SECOND)
    failed = ConnectEvent(2 * SECOND, 10, 10, 0, "", "other", "", None, 5, "failed")
    closed = ConnectEvent(3 * SECOND, 10, 12, 0, "", "other", "", None, 6, "close")
    exited = ConnectEvent(4 * SECOND, 10, 10, 0, "", "other", "", None, -1, "exit")
    again = event(tgid=10, cgroup_id=HOST_CGROUP, time_ns=5 * SECOND)
    probe = FakeProbe([[connect, failed], [closed], [exited, again]], stop=stop)
    probe.start()
    attributed: list[ConnectEvent] = []
    observed: list[ConnectEvent] = []
    lifetimes: list[ConnectEvent] = []

    class Recording(FakeAttributor):
        def attribute(self, event: ConnectEvent) -> Attribution:
            attributed.append(event)
            return super().attribute(event)

    out = io.StringIO()
    counts = TraceLoop(
        probe,
        Recording(),  # type: ignore[arg-type]
        JsonOutput(out, "n", WallClock(0)),
        dedup=Dedup(60),
        observer=lambda e, _who: observed.append(e),
        lifetime=lifetimes.append,
    ).run(stop)
    assert lifetimes == [failed, closed, exited]
    assert attributed == observed == [connect, again]
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["msg"] for r in rows] == ["containerd socket connection opened"] * 2 + [
        "containerd socket tracer stopped"
    ]
    assert (counts.events, counts.resolved, counts.host, counts.suppressed) == (2, 1, 1, 0)
    assert (rows[-1]["events"], rows[-1]["resolved"], rows[-1]["host"]) == (2, 1, 1)


def test_lifetime_events_without_a_lifetime_observer_are_dropped() -> None:
    rows, _ = run(
        [
            [
                ConnectEvent(1, 10, 10, 0, "", "other", "", None, 5, "close"),
                ConnectEvent(2, 10, 10, 0, "", "other", "", None, -1, "exit"),
                event(cgroup_id=GONE_CGROUP),
            ]
        ]
    )
    assert [r.get("source") for r in rows] == ["unresolved", None]
    assert rows[-1]["events"] == 1 and rows[-1]["unresolved"] == 1


def test_send_events_go_to_the_lifetime_observer_in_order() -> None:
    stop = threading.Event()
    connect = event(tgid=10, cgroup_id=CONTAINER_CGROUP, time_ns=1 * SECOND)
    sent = ConnectEvent(2 * SECOND, 10, 11, CONTAINER_CGROUP, "", "unix", "", None, 5, "send")
    closed = ConnectEvent(3 * SECOND, 10, 11, 0, "", "other", "", None, 5, "close")
    probe = FakeProbe([[connect, sent, closed]], stop=stop)
    probe.start()
    seen: list[ConnectEvent] = []
    counts = TraceLoop(
        probe,
        FakeAttributor(),  # type: ignore[arg-type]
        JsonOutput(io.StringIO(), "n", WallClock(0)),
        observer=lambda e, _who: seen.append(e),
        lifetime=seen.append,
    ).run(stop)
    assert seen == [connect, sent, closed]
    assert counts.events == 1


def test_an_excluded_name_is_dropped_only_on_the_host() -> None:
    """A thread named ``crictl`` on the host is the node's own tool: dropped and counted, never
    observed nor written. In a container (or in one nobody knows) it is a client like any other."""
    stop = threading.Event()
    host = event(tgid=10, cgroup_id=HOST_CGROUP, comm="crictl")._replace(excluded=True)
    pod = event(tgid=11, cgroup_id=CONTAINER_CGROUP, comm="crictl")._replace(excluded=True)
    unknown = event(tgid=12, cgroup_id=GONE_CGROUP, comm="kubelet")._replace(excluded=True)
    plain = event(tgid=13, cgroup_id=HOST_CGROUP, comm="client")
    host_close = ConnectEvent(2 * SECOND, 10, 10, 0, "", "other", "", None, 5, "close")
    probe = FakeProbe([[host, pod, unknown, plain, host_close]], stop=stop)
    probe.start()
    observed: list[tuple[ConnectEvent, str]] = []
    lifetimes: list[ConnectEvent] = []
    out = io.StringIO()
    counts = TraceLoop(
        probe,
        FakeAttributor(),  # type: ignore[arg-type]
        JsonOutput(out, "n", WallClock(0)),
        observer=lambda e, who: observed.append((e, who.source)),
        lifetime=lifetimes.append,
    ).run(stop)
    assert observed == [(pod, "index"), (unknown, "unresolved"), (plain, "host")]
    assert lifetimes == [host_close]  # the feed ignores a handle it never got
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r.get("pid"), r.get("comm"), r.get("source")) for r in rows[:-1]] == [
        (11, "crictl", "index"),
        (12, "kubelet", "unresolved"),
        (13, "client", "host"),
    ]
    assert rows[0]["pod_name"] == "web"
    final = rows[-1]
    assert (final["events"], final["host"], final["excluded"]) == (3, 1, 1)
    assert (counts.events, counts.excluded) == (3, 1)
