"""The correlation engine on synthetic schedules: one client of a deprecated API among innocent
pods calling on other schedules; lifetimes; clock slack; bounds; the log lines."""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ociresolve import render
from ociresolve.deprecations.client import V1ALPHA2
from ociresolve.deprecations.correlate import (
    Attribution,
    Connection,
    Correlator,
    Identity,
    Settings,
)
from ociresolve.deprecations.lines import client_line, occurrence_line

MS = 1_000_000
S = 1_000_000_000
T0 = 1_750_000_000 * S
PULL = "io.containerd.deprecation/pull-schema-1-image"


def conn(
    pod: str | None, at: int, *, close: int | None = None, comm: str = "client", pid: int = 1
) -> Connection:
    namespace, name = pod.split("/") if pod else (None, None)
    return Connection(
        connect_ns=at,
        close_ns=close,
        pid=pid,
        comm=comm,
        pod_namespace=namespace,
        pod_name=name,
        container="main" if pod else None,
        container_id=f"{pid:064x}" if pod else None,
    )


def who(pod: str | None, comm: str = "client") -> Identity:
    namespace, name = pod.split("/") if pod else (None, None)
    return Identity(namespace, name, "main" if pod else None, comm)


@dataclass(frozen=True)
class Schedule:
    """A pod connecting every ``period`` from ``offset``, with ``jitter`` (ns)."""

    pod: str
    period: int
    offset: int
    jitter: int = 0


def simulate(
    correlator: Correlator,
    client: Schedule,
    innocents: list[Schedule],
    *,
    calls: int,
    delay: tuple[int, int] = (1 * MS, 8 * MS),
    poll: int = 5 * S,
    seed: int = 0,
    keep_clear: int = 0,
) -> None:
    """Feed connections as they happen and each of the client's deprecated calls (``delay``
    after its connect) at the next poll, as the poller would. Innocent connects closer than
    ``keep_clear`` to a call are left out (schedules that never collide)."""
    rng = random.Random(seed)
    events: list[tuple[int, int, str, str, int]] = []  # (fed at, order, kind, pod, time)
    end = client.offset + calls * client.period
    calls_at: list[int] = []
    for k in range(calls):
        at = T0 + client.offset + k * client.period + rng.randint(0, client.jitter)
        call = at + rng.randint(*delay)
        calls_at.append(call)
        events.append((at, len(events), "connect", client.pod, at))
        fed = T0 + (call - T0) // poll * poll + poll
        events.append((fed, len(events), "occur", "", call))
    for schedule in innocents:
        at = T0 + schedule.offset
        while at < T0 + end:
            jittered = at + rng.randint(0, schedule.jitter)
            if all(abs(jittered - call) >= keep_clear for call in calls_at):
                events.append((jittered, len(events), "connect", schedule.pod, jittered))
            at += schedule.period
    heapq.heapify(events)
    pids = {name: pid for pid, name in enumerate([client.pod, *(s.pod for s in innocents)], 10)}
    while events:
        _, _, kind, pod, at = heapq.heappop(events)
        if kind == "connect":
            correlator.connected(conn(pod, at, pid=pids[pod]))
        else:
            correlator.occurred(V1ALPHA2, at)


INNOCENTS = [
    Schedule("shop/cart", 3 * S, 1_300 * MS, 200 * MS),
    Schedule("shop/web", 7 * S, 2_100 * MS, 500 * MS),
    Schedule("ops/metrics", 2_500 * MS, 400 * MS, 100 * MS),
    Schedule("ops/backup", 11 * S, 5_000 * MS),
]


def ranked(correlator: Correlator) -> dict[str | None, Attribution]:
    return {row.identity.pod: row for row in correlator.attributions(V1ALPHA2)}


def test_the_client_comes_out_on_top() -> None:
    correlator = Correlator()
    client = Schedule("legacy/collector", 10 * S, 500 * MS, 300 * MS)
    simulate(correlator, client, INNOCENTS, calls=10)
    rows = correlator.attributions(V1ALPHA2)
    assert rows[0].identity == who("legacy/collector")
    assert rows[0].confidence > 0.8
    assert rows[0].occurrences == rows[0].considered == 10
    assert all(row.confidence < 0.3 for row in rows[1:])
    assert correlator.counted(V1ALPHA2) == 10
    assert correlator.unexplained(V1ALPHA2) == 0
    assert correlator.late(V1ALPHA2) == 0


def test_confidence_grows_with_repeated_co_occurrence() -> None:
    history = []
    for calls in (1, 3, 10, 30):
        correlator = Correlator()
        simulate(
            correlator, Schedule("legacy/collector", 10 * S, 1_700 * MS), INNOCENTS, calls=calls
        )
        history.append(ranked(correlator)["legacy/collector"].confidence)
    assert history == sorted(history)
    assert history[0] == pytest.approx(0.5, abs=0.01)  # one occurrence: 1 / (1 + prior)
    assert history[-1] > 0.95


def test_an_innocent_that_collides_once_stays_low() -> None:
    correlator = Correlator()
    simulate(correlator, Schedule("legacy/collector", 10 * S, 500 * MS), [], calls=12)
    # One more occurrence, with an innocent connecting 1 ms after the client.
    at = T0 + 200 * S
    correlator.connected(conn("legacy/collector", at, pid=10))
    correlator.connected(conn("shop/cart", at + 1 * MS, pid=11))
    correlator.occurred(V1ALPHA2, at + 3 * MS)
    rows = ranked(correlator)
    assert rows["legacy/collector"].confidence > 0.8
    assert rows["shop/cart"].confidence < 0.3
    assert rows["shop/cart"].occurrences == 1


@settings(max_examples=60, deadline=None)
@given(
    periods=st.lists(st.integers(1_000, 15_000), min_size=1, max_size=6),
    client_period=st.integers(5_000, 60_000),
    seed=st.integers(0, 2**32),
    delay=st.integers(0, 20),
)
def test_any_non_colliding_schedules(
    periods: list[int], client_period: int, seed: int, delay: int
) -> None:
    rng = random.Random(seed)
    innocents = [
        Schedule(f"ns/innocent-{i}", p * MS, rng.randint(0, p) * MS, rng.randint(0, 300) * MS)
        for i, p in enumerate(periods)
    ]
    correlator = Correlator()
    client = Schedule("legacy/collector", client_period * MS, rng.randint(0, 1000) * MS, 50 * MS)
    simulate(
        correlator,
        client,
        innocents,
        calls=10,
        delay=(0, delay * MS),
        seed=seed,
        keep_clear=150 * MS,
    )
    rows = correlator.attributions(V1ALPHA2)
    assert rows[0].identity == who("legacy/collector")
    assert rows[0].confidence > 0.8
    assert all(row.confidence < 0.3 for row in rows[1:])


# -- what makes an identity weak ---------------------------------------------------------------


def test_absent_at_half_the_occurrences() -> None:
    correlator = Correlator()
    for k in range(10):
        at = T0 + k * 10 * S
        if k % 2 == 0:
            correlator.connected(conn("legacy/collector", at))
        correlator.occurred(V1ALPHA2, at + 2 * MS)
    row = ranked(correlator)["legacy/collector"]
    assert (row.occurrences, row.considered) == (5, 10)
    assert row.confidence == pytest.approx(5 / 11, abs=0.01)
    assert correlator.unexplained(V1ALPHA2) == 5


def test_only_ever_alongside_others() -> None:
    correlator = Correlator()
    pods = [f"ns/pod-{i}" for i in range(4)]
    for k in range(10):
        at = T0 + k * 10 * S
        for pid, pod in enumerate(pods):
            correlator.connected(conn(pod, at, pid=pid))
        correlator.occurred(V1ALPHA2, at + 2 * MS)
    for row in correlator.attributions(V1ALPHA2):
        assert row.confidence == pytest.approx(10 / 4 / 11, abs=0.001)
        assert row.occurrences == 10


def test_a_frequent_caller_does_not_win_by_volume_alone() -> None:
    correlator = Correlator()
    chatty = Schedule("ops/chatty", 100 * MS, 37 * MS)  # ten connects a second
    simulate(correlator, Schedule("legacy/collector", 10 * S, 0), [chatty], calls=10, seed=3)
    rows = ranked(correlator)
    assert correlator.attributions(V1ALPHA2)[0].identity == who("legacy/collector")
    assert rows["legacy/collector"].confidence > rows["ops/chatty"].confidence


def test_a_new_identity_counts_only_the_occurrences_since_it_appeared() -> None:
    correlator = Correlator()
    for k in range(10):  # ten occurrences nobody explains
        correlator.occurred(V1ALPHA2, T0 + k * S)
    for k in range(3):
        at = T0 + 20 * S + k * 10 * S
        correlator.connected(conn("legacy/collector-v2", at))
        correlator.occurred(V1ALPHA2, at + 2 * MS)
    row = ranked(correlator)["legacy/collector-v2"]
    assert (row.occurrences, row.considered) == (3, 3)
    assert row.confidence == pytest.approx(0.75, abs=0.01)


# -- lifetimes ---------------------------------------------------------------------------------


def test_a_persistent_connection_whose_lifetime_covers_the_occurrence() -> None:
    correlator = Correlator()
    correlator.connected(conn("legacy/collector", T0, close=T0 + 60 * S))
    correlator.connected(conn("shop/web", T0 + 29 * S, close=T0 + 29 * S + 5 * MS, pid=2))
    evidence = correlator.occurred(V1ALPHA2, T0 + 30 * S)
    assert [c.identity for c in evidence.candidates] == [who("legacy/collector")]
    assert evidence.candidates[0].share == 1.0


def test_a_short_connection_explains_better_than_a_long_one() -> None:
    correlator = Correlator()
    correlator.connected(conn("ops/monitor", T0, close=T0 + 60 * S, pid=1))
    handle = correlator.connected(conn("legacy/collector", T0 + 30 * S, pid=2))
    correlator.closed(handle, T0 + 30 * S + 20 * MS)
    evidence = correlator.occurred(V1ALPHA2, T0 + 30 * S + 10 * MS)
    shares = {c.identity.pod: c.share for c in evidence.candidates}
    assert shares["legacy/collector"] > 0.99
    # Densities: 1/60 s inside the monitor's minute; the collector's 20 ms around t, with 5 ms
    # of Laplace skew: (G(10 ms) - G(-10 ms)) / 20 ms, G(x) = 1 - exp(-x / 5 ms) / 2 for x >= 0.
    collector = (1 - math.exp(-2)) / 0.02
    assert shares["ops/monitor"] == pytest.approx((1 / 60) / (1 / 60 + collector), rel=0.1)


def test_a_connection_closed_before_the_occurrence_is_not_a_candidate() -> None:
    correlator = Correlator()
    handle = correlator.connected(conn("shop/web", T0))
    correlator.closed(handle, T0 + 5 * MS)
    correlator.connected(conn("legacy/collector", T0 - 1 * S))  # close unknown, in the window
    evidence = correlator.occurred(V1ALPHA2, T0 + 200 * MS)
    assert [c.identity.pod for c in evidence.candidates] == ["legacy/collector"]


def test_open_connections_when_closes_are_tracked() -> None:
    correlator = Correlator(Settings(closes_tracked=True))
    correlator.connected(conn("legacy/collector", T0))  # open since, no close yet
    for k in range(1, 11):
        evidence = correlator.occurred(V1ALPHA2, T0 + k * 60 * S)
        assert [c.identity.pod for c in evidence.candidates] == ["legacy/collector"]
    assert len(correlator) == 1  # never pruned while open
    without = Correlator()
    without.connected(conn("legacy/collector", T0))
    assert without.occurred(V1ALPHA2, T0 + 60 * S).candidates == ()


def test_the_window_after_a_connect_with_no_close() -> None:
    correlator = Correlator()
    correlator.connected(conn("legacy/collector", T0))
    assert correlator.occurred(V1ALPHA2, T0 + 1_900 * MS).candidates
    assert not correlator.occurred(V1ALPHA2, T0 + 2_100 * MS).candidates


# -- clocks ------------------------------------------------------------------------------------


def test_clock_slack() -> None:
    correlator = Correlator()
    correlator.connected(conn("legacy/collector", T0))
    # containerd's clock a little behind the tracer's: the call seems to precede the connect.
    assert correlator.occurred(V1ALPHA2, T0 - 30 * MS).candidates
    assert not correlator.occurred(V1ALPHA2, T0 - 80 * MS).candidates
    closed = Correlator()
    handle = closed.connected(conn("legacy/collector", T0))
    closed.closed(handle, T0 + 10 * MS)
    assert closed.occurred(V1ALPHA2, T0 + 55 * MS).candidates
    assert not closed.occurred(V1ALPHA2, T0 + 70 * MS).candidates


def test_late_occurrences_are_not_counted() -> None:
    correlator = Correlator(since_ns=T0)
    correlator.connected(conn("legacy/collector", T0 + 100 * S))
    assert correlator.occurred(V1ALPHA2, T0 + 50 * S).late  # older than the horizon
    assert correlator.occurred(V1ALPHA2, T0 - 1 * S).late  # before tracing started
    assert correlator.counted(V1ALPHA2) == 0
    assert correlator.late(V1ALPHA2) == 2
    assert correlator.attributions(V1ALPHA2) == []


def test_deprecations_are_scored_apart() -> None:
    correlator = Correlator()
    for k in range(5):
        at = T0 + k * 10 * S
        correlator.connected(conn("legacy/collector", at, pid=1))
        correlator.occurred(V1ALPHA2, at + 2 * MS)
        correlator.connected(conn("ci/puller", at + 5 * S, pid=2, comm="ctr"))
        correlator.occurred(PULL, at + 5 * S + 2 * MS)
    rows = correlator.attributions()
    assert [(r.deprecation, r.identity.pod) for r in rows] == [
        (V1ALPHA2, "legacy/collector"),  # by id: .../cri-api-v1alpha2 < .../pull-schema-1-image
        (PULL, "ci/puller"),
    ]
    assert all(r.confidence == pytest.approx(5 / 6, abs=0.01) for r in rows)


# -- bounds ------------------------------------------------------------------------------------


def test_connections_are_kept_only_for_the_horizon() -> None:
    correlator = Correlator(Settings(horizon_ns=10 * S))
    for k in range(20_000):  # 100 connects a second for 200 s
        correlator.connected(conn("ops/chatty", T0 + k * 10 * MS))
        if k % 500 == 0:
            correlator.occurred(V1ALPHA2, T0 + k * 10 * MS + 1 * MS)
            # What can still explain a non-late occurrence: the horizon and the window.
            assert len(correlator) <= (10 + 2) * 100 + 500 + 1
    assert correlator.counted(V1ALPHA2) == 40


def test_the_caps() -> None:
    correlator = Correlator(Settings(max_connections=100, max_identities=50))
    for k in range(1_000):
        correlator.connected(conn(f"ns/pod-{k}", T0 + k * MS, pid=k))
        if k % 10 == 9:
            correlator.occurred(V1ALPHA2, T0 + k * MS + 1 * MS)
    assert len(correlator) == 100
    assert correlator.identities == 50
    assert len(correlator.attributions(V1ALPHA2)) <= 50


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["connect", "close", "occur"]),
            st.integers(0, 120_000),  # ms
            st.integers(0, 5),  # pod / handle / deprecation
            st.integers(0, 3_000),  # lifetime, ms
        ),
        max_size=200,
    ),
    st.booleans(),
)
def test_invariants(steps: list[tuple[str, int, int, int]], tracked: bool) -> None:
    correlator = Correlator(Settings(closes_tracked=tracked, max_identities=4))
    handles: list[int] = []
    for kind, at, n, lifetime in sorted(steps, key=lambda step: step[1]):
        time_ns = T0 + at * MS
        if kind == "connect":
            handles.append(correlator.connected(conn(f"ns/pod-{n}", time_ns, pid=n)))
        elif kind == "close" and handles:
            correlator.closed(handles[n % len(handles)], time_ns + lifetime * MS)
        elif kind == "occur":
            evidence = correlator.occurred(f"dep-{n % 2}", time_ns)
            if evidence.candidates:
                assert sum(c.share for c in evidence.candidates) == pytest.approx(1.0)
                shares = [c.share for c in evidence.candidates]
                assert shares == sorted(shares, reverse=True)
    assert correlator.identities <= 4
    for row in correlator.attributions():
        assert 0.0 <= row.confidence < 1.0
        assert row.occurrences <= row.considered
        assert row.evidence <= row.occurrences + 1e-9
        assert row.considered <= correlator.counted(row.deprecation)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="positive"):
        Settings(window_ns=0)
    with pytest.raises(ValueError, match="positive"):
        Settings(prior=0)


# -- log lines ---------------------------------------------------------------------------------


def test_occurrence_lines() -> None:
    at = T0 + 384 * MS
    assert occurrence_line(
        time_ns=at, node="vm", deprecation=V1ALPHA2, last_occurrence_ns=T0 + 959_558_222
    ) == (
        'time=2025-06-15T15:06:40.384Z level=info msg="found CRI v1alpha2 API deprecation '
        'warning" node=vm deprecation=io.containerd.deprecation/cri-api-v1alpha2 '
        "lastOccurrence=2025-06-15T15:06:40.959558222Z"
    )
    assert occurrence_line(
        time_ns=at, node="vm", deprecation=PULL, last_occurrence_ns=None, existing=True
    ) == (
        'time=2025-06-15T15:06:40.384Z level=info msg="found deprecation warning" node=vm '
        "deprecation=io.containerd.deprecation/pull-schema-1-image existing=true"
    )


def test_client_lines() -> None:
    correlator = Correlator()
    for k in range(10):
        at = T0 + k * 10 * S
        correlator.connected(conn("legacy/collector", at, comm="crictl"))
        correlator.connected(conn(None, at + 5 * S, comm="bad name\n"))
        correlator.occurred(V1ALPHA2, at + 2 * MS)
        correlator.occurred(V1ALPHA2, at + 5 * S + 1 * MS)
    rows = {row.identity.comm: row for row in correlator.attributions(V1ALPHA2)}
    first, host = rows["crictl"], rows["bad name\n"]
    assert client_line(first, time_ns=T0, node="vm") == (
        'time=2025-06-15T15:06:40.000Z level=info msg="deprecated API client" node=vm '
        "deprecation=io.containerd.deprecation/cri-api-v1alpha2 pod=legacy/collector "
        "container=main comm=crictl confidence=0.48 occurrences=10"
    )
    line = client_line(host, time_ns=T0, node="vm")
    assert "\n" not in line
    assert "pod=" not in line
    assert 'comm="bad name\\n"' in line
    assert dict(_fields(line))["comm"] == "bad name\\n"


def _fields(line: str) -> list[tuple[str, str]]:
    """A minimal logfmt reader for the checks above (the tracer's tests have a full one)."""
    fields: list[tuple[str, str]] = []
    rest = line
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            end = 1
            while rest[end] != '"':
                end += 2 if rest[end] == "\\" else 1
            fields.append((key, rest[1:end]))
            rest = rest[end + 2 :]
        else:
            text, _, rest = rest.partition(" ")
            fields.append((key, text))
    return fields


def test_values_go_through_logfmt() -> None:
    assert render.logfmt_value("legacy/collector") == "legacy/collector"
