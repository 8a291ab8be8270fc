"""The poller: new occurrences once each, the first poll's warnings marked existing, the runtime
down or too old logged once and retried with backoff, stopping; then the whole chain over the
fake containerd: poller, correlator, log lines."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakecri import socket_path
from fakeintrospection import V1ALPHA2, V1ALPHA2_MESSAGE, FakeIntrospection
from hypothesis import given
from hypothesis import strategies as st

from ociresolve.deprecations import Deprecation, IntrospectionClient
from ociresolve.deprecations.correlate import Connection, Correlator
from ociresolve.deprecations.errors import IntrospectionError, RuntimeUnreachable, ServiceMissing
from ociresolve.deprecations.lines import client_lines
from ociresolve.deprecations.poller import Occurrence, Poller

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000 * S
PULL = "io.containerd.deprecation/pull-schema-1-image"

Answer = list[Deprecation] | IntrospectionError


def dep(id_: str, at: int | None) -> Deprecation:
    return Deprecation(id=id_, message=f"{id_} is deprecated", last_occurrence_ns=at)


class Scripted:
    """A source answering from a script, one entry per poll (the last one repeats)."""

    endpoint = "/run/containerd/containerd.sock"

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.calls = 0

    def deprecations(self) -> list[Deprecation]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, IntrospectionError):
            raise answer
        return list(answer)


class FakeTime:
    """A monotonic clock that only ``wait`` advances; stops after ``waits`` waits."""

    def __init__(self, waits: int, on_wait: Callable[[int], None] | None = None) -> None:
        self.now = 100.0
        self.waited: list[float] = []
        self.waits = waits
        self.on_wait = on_wait

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waited.append(seconds)
        self.now += seconds
        if self.on_wait is not None:
            self.on_wait(len(self.waited))
        return len(self.waited) >= self.waits


def run(
    source: Scripted, time: FakeTime, *, interval: float = 5.0, backoff_max: float = 60.0
) -> list[Occurrence]:
    poller = Poller(
        source, clock=time.clock, wait=time.wait, interval=interval, backoff_max=backoff_max
    )
    return list(poller)


def test_new_occurrences_once_each() -> None:
    source = Scripted(
        [
            [dep(V1ALPHA2, T0)],
            [dep(V1ALPHA2, T0)],  # nothing new
            [dep(V1ALPHA2, T0 + S), dep(PULL, T0 + 2 * S)],
            [dep(V1ALPHA2, T0 + S), dep(PULL, T0 + 2 * S)],
        ]
    )
    time = FakeTime(waits=4)
    found = run(source, time, interval=5.0)
    assert found == [
        Occurrence(dep(V1ALPHA2, T0), existing=True),
        Occurrence(dep(V1ALPHA2, T0 + S)),
        Occurrence(dep(PULL, T0 + 2 * S)),
    ]
    assert time.waited == [5.0, 5.0, 5.0, 5.0]
    assert source.calls == 4


def test_the_first_poll_reports_what_is_there_as_existing() -> None:
    poller = Poller(Scripted([[dep(V1ALPHA2, T0), dep(PULL, None)], []]))
    assert poller.poll() == [
        Occurrence(dep(V1ALPHA2, T0), existing=True),
        Occurrence(dep(PULL, None), existing=True),
    ]
    assert poller.poll() == []


def test_a_restarted_containerd_starts_empty() -> None:
    poller = Poller(Scripted([[dep(V1ALPHA2, T0)], [], [dep(V1ALPHA2, T0)]]))
    poller.poll()
    assert poller.poll() == []
    # The same time again after the restart: a new occurrence (containerd forgot the old one).
    assert poller.poll() == [Occurrence(dep(V1ALPHA2, T0))]


def test_a_fixed_cadence() -> None:
    time = FakeTime(waits=3)
    source = Scripted([[]])
    slow = source.deprecations

    def slow_call() -> list[Deprecation]:
        time.now += 1.5  # each poll takes 1.5 s
        return slow()

    source.deprecations = slow_call  # type: ignore[method-assign]
    run(source, time, interval=5.0)
    assert time.waited == [3.5, 3.5, 3.5]


def test_the_runtime_down_is_logged_once_and_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = RuntimeUnreachable(
        "/run/containerd/containerd.sock", "Server: UNAVAILABLE: x", code="UNAVAILABLE"
    )
    source = Scripted([[dep(V1ALPHA2, T0)], *[down] * 6, [dep(V1ALPHA2, T0 + S)]])
    time = FakeTime(waits=9)
    with caplog.at_level(logging.INFO, logger="ociresolve.deprecations.poller"):
        found = run(source, time, interval=5.0, backoff_max=30.0)
    assert found == [
        Occurrence(dep(V1ALPHA2, T0), existing=True),
        Occurrence(dep(V1ALPHA2, T0 + S)),
    ]
    assert time.waited == [5.0, 5.0, 10.0, 20.0, 30.0, 30.0, 30.0, 5.0, 5.0]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("WARNING", "cannot read containerd's deprecation warnings; retrying"),
        ("INFO", "reading containerd's deprecation warnings again"),
    ]
    assert caplog.records[0].fields["error"] == str(down)  # type: ignore[attr-defined]


def test_a_change_of_error_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    down = RuntimeUnreachable("s", "x", code="UNAVAILABLE")
    old = ServiceMissing("s", "1.6.20")
    source = Scripted([down, down, old, old])
    with caplog.at_level(logging.WARNING, logger="ociresolve.deprecations.poller"):
        assert run(source, FakeTime(waits=4)) == []
    assert len(caplog.records) == 2


def test_stop() -> None:
    poller = Poller(Scripted([[dep(V1ALPHA2, T0)]]))
    poller.stop.set()
    assert list(poller) == []
    poller = Poller(Scripted([[dep(V1ALPHA2, T0)]]), interval=0.01)
    found = []
    for occurrence in poller:
        found.append(occurrence)
        poller.stop.set()  # the real wait: returns at once when stopped
    assert len(found) == 1


def test_bad_intervals() -> None:
    with pytest.raises(ValueError, match="interval"):
        Poller(Scripted([[]]), interval=0)
    with pytest.raises(ValueError, match="interval"):
        Poller(Scripted([[]]), interval=10, backoff_max=5)


@given(st.lists(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), max_size=4)))
def test_each_change_is_reported_once(polls: list[list[tuple[str, int]]]) -> None:
    answers: list[Answer] = [[dep(i, t) for i, t in dict(answer).items()] for answer in polls]
    poller = Poller(Scripted(answers or [[]]))
    previous: dict[str, int | None] = {}
    for k, answer in enumerate(answers):
        found = poller.poll()
        assert isinstance(answer, list)
        current = {d.id: d.last_occurrence_ns for d in answer}
        expected = [i for i, t in current.items() if k == 0 or previous.get(i, -1) != t]
        assert [o.deprecation.id for o in found] == expected
        assert all(o.existing == (k == 0) for o in found)
        previous = current


# -- over the fake containerd ------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeIntrospection]:
    server = FakeIntrospection(socket_path(tmp_path, "containerd.sock")).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_chain_over_the_real_protocol(fake: FakeIntrospection) -> None:
    """Connections and occurrences on a schedule; containerd down for a while; the poller
    feeds the correlator, which names the client."""
    correlator = Correlator(since_ns=T0)
    client = IntrospectionClient(fake.socket, timeout=1.0)

    def tick(k: int) -> None:
        # Ten seconds of the node's life per poll: the client calls v1alpha2 once.
        at = T0 + k * 10 * S
        correlator.connected(
            Connection(
                connect_ns=at,
                pid=7,
                comm="legacy",
                pod_namespace="shop",
                pod_name="legacy-5d9f",
                container="collector",
            )
        )
        correlator.connected(
            Connection(
                connect_ns=at + 3 * S,
                pid=8,
                comm="web",
                pod_namespace="shop",
                pod_name="web-1",
                container="web",
            )
        )
        if k == 4:
            fake.stop()  # containerd restarts: down for two polls
        if k == 6:
            fake.start()
        fake.occur(V1ALPHA2, at + 4 * MS, V1ALPHA2_MESSAGE)

    time = FakeTime(waits=12, on_wait=tick)
    poller = Poller(client, clock=time.clock, wait=time.wait, interval=10.0, backoff_max=10.0)
    found = []
    for occurrence in poller:
        found.append(occurrence)
        last = occurrence.deprecation.last_occurrence_ns
        assert last is not None
        if not occurrence.existing:
            correlator.occurred(occurrence.deprecation.id, last)
    client.close()
    assert found[0].existing is False  # nothing was there at the first poll
    assert all(o.deprecation.message == V1ALPHA2_MESSAGE for o in found)
    (line, *_) = client_lines(correlator.attributions(V1ALPHA2), time_ns=T0, node="vm", minimum=0.5)
    assert "pod=shop/legacy-5d9f container=collector comm=legacy" in line
    top = correlator.attributions(V1ALPHA2)[0]
    assert top.confidence > 0.8
    assert poller.failures >= 1
