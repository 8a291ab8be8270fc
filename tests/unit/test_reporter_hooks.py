"""The reporter's hooks for the tracer and the daemon: ``sent`` feeds the correlator a
connection's activity (from the tracer's thread, beside the reporter's), and ``workloads``
names a client's workload in its line."""

from __future__ import annotations

import io
import threading

from tracerfakes import parse_logfmt

from ociresolve.deprecations import Deprecation
from ociresolve.deprecations.correlate import Connection, Correlator, Settings
from ociresolve.deprecations.lines import CLIENT_MSG
from ociresolve.deprecations.poller import Occurrence
from ociresolve.deprecations.reporter import Reporter

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000 * S
V1ALPHA2 = "io.containerd.deprecation/cri-api-v1alpha2"


class NoSource:
    endpoint = "/run/containerd/containerd.sock"

    def deprecations(self) -> list[Deprecation]:
        return []


def conn(pod: str | None, at: int, *, pid: int) -> Connection:
    namespace, name = pod.split("/") if pod else (None, None)
    return Connection(
        connect_ns=at,
        pid=pid,
        comm="agent",
        pod_namespace=namespace,
        pod_name=name,
        container="main" if pod else None,
        container_id=f"{pid:064x}" if pod else None,
    )


def occurrence(at: int) -> Occurrence:
    return Occurrence(Deprecation(id=V1ALPHA2, message="deprecated", last_occurrence_ns=at))


def clients(stream: io.StringIO) -> list[dict[str, str]]:
    rows = [dict(parse_logfmt(line)) for line in stream.getvalue().splitlines()]
    return [row for row in rows if row["msg"] == CLIENT_MSG]


def test_sent_feeds_the_correlators_activity() -> None:
    correlator = Correlator(Settings(closes_tracked=True), since_ns=T0)
    stream = io.StringIO()
    reporter = Reporter(NoSource(), node="n", stream=stream, correlator=correlator)
    caller = reporter.connected(conn("legacy/agent", T0, pid=10))
    other = reporter.connected(conn("ops/monitor", T0, pid=20))
    assert caller is not None and other is not None
    reporter.sent(other, T0 + 1 * S)
    reporter.sent(caller, T0 + 5 * S)
    reporter.handle(occurrence(T0 + 5 * S + 4 * MS))
    assert [row["pod"] for row in clients(stream)] == ["legacy/agent"]
    (top, *_) = reporter.clients()
    assert top.identity.pod == "legacy/agent" and top.occurrences == 1


def test_sent_without_a_correlator_does_nothing() -> None:
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO())
    reporter.sent(0, T0)
    assert reporter.clients() == []


def test_sends_from_another_thread_beside_the_reporter() -> None:
    correlator = Correlator(Settings(closes_tracked=True), since_ns=T0)
    reporter = Reporter(NoSource(), node="n", stream=io.StringIO(), correlator=correlator)
    handle = reporter.connected(conn("legacy/agent", T0, pid=10))
    assert handle is not None
    errors: list[BaseException] = []

    def tracer() -> None:
        try:
            for k in range(5_000):
                reporter.sent(handle, T0 + k * MS)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=tracer)
    thread.start()
    for k in range(50):
        reporter.handle(occurrence(T0 + k * 100 * MS + 3 * MS))
    thread.join()
    assert errors == []
    assert correlator.counted(V1ALPHA2) == 50


def test_client_lines_name_the_workload() -> None:
    asked: list[str | None] = []

    def workloads(container_id: str | None) -> str | None:
        asked.append(container_id)
        return "Deployment/agent" if container_id == f"{10:064x}" else None

    correlator = Correlator(since_ns=T0)
    stream = io.StringIO()
    reporter = Reporter(
        NoSource(), node="n", stream=stream, correlator=correlator, workloads=workloads
    )
    reporter.connected(conn("legacy/agent-5d9f7-x2x4q", T0, pid=10))
    reporter.handle(occurrence(T0 + 3 * MS))
    reporter.connected(conn("shop/web", T0 + 10 * S, pid=20))  # no workload known
    reporter.handle(occurrence(T0 + 10 * S + 3 * MS))
    reporter.connected(conn(None, T0 + 20 * S, pid=30))  # a host process: not asked
    reporter.handle(occurrence(T0 + 20 * S + 3 * MS))
    rows = clients(stream)
    assert [(row.get("pod"), row.get("workload")) for row in rows] == [
        ("legacy/agent-5d9f7-x2x4q", "Deployment/agent"),
        ("shop/web", None),
        (None, None),
    ]
    assert asked == [f"{10:064x}", f"{20:064x}"]


class Fresh:
    """One occurrence, recorded ``age`` before the poll that answers it; then nothing."""

    endpoint = "/run/containerd/containerd.sock"

    def __init__(self, at: int) -> None:
        self.answers = [[], [Deprecation(id=V1ALPHA2, message="deprecated", last_occurrence_ns=at)]]

    def deprecations(self) -> list[Deprecation]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_an_occurrence_polled_right_after_the_call_waits_for_the_tracers_report() -> None:
    """A poll can come a fraction of a millisecond after containerd recorded the call, before
    the tracer delivered the send that made it: judged at once, the occurrence would go to a
    connection that sent earlier."""
    now = [T0 + 10 * S]
    at = now[0] - 1 * MS  # recorded 1 ms before the poll
    correlator = Correlator(Settings(closes_tracked=True), since_ns=T0)
    stream = io.StringIO()
    stop = threading.Event()
    reporter = Reporter(
        Fresh(at),
        node="n",
        stream=stream,
        interval=0.001,
        correlator=correlator,
        clock=lambda: now[0],
        settle=0.2,
    )
    caller = reporter.connected(conn("legacy/agent", T0, pid=10))
    other = reporter.connected(conn("ops/monitor", T0, pid=20))
    assert caller is not None and other is not None
    reporter.sent(other, at - 300 * MS)

    def tracer() -> None:  # the report of the call's send, 50 ms after the poll
        stop.wait(0.05)
        reporter.sent(caller, at - 3 * MS)
        stop.wait(0.3)
        stop.set()

    thread = threading.Thread(target=tracer)
    thread.start()
    reporter.run(stop)
    thread.join()
    assert [row["pod"] for row in clients(stream)] == ["legacy/agent"]


def test_an_old_occurrence_is_judged_at_once() -> None:
    reporter = Reporter(
        NoSource(), node="n", stream=io.StringIO(), correlator=Correlator(), clock=lambda: T0
    )
    assert reporter._unsettled(occurrence(T0 - 1 * S)) == 0.0
    assert 0.0 < reporter._unsettled(occurrence(T0 - 1 * MS)) <= reporter.settle
