"""The correlator with per-request activity: an occurrence is shared by the connections that
sent around it, the lifetime/connect model is the fallback, and connections open too long
without a send go dormant.

The simulations model the real thing with fake times: containerd records a deprecated call
2-7 ms after the client sent it and keeps only the latest occurrence, which the poller reads
every few seconds; the kernel reports a connection's sends at most once per 5 ms (the first
send of every connection included: a gRPC client sends its preface at once); persistent clients
send only when they call, per-call clients connect, send and close.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from ociresolve.deprecations import correlate
from ociresolve.deprecations.client import V1ALPHA2
from ociresolve.deprecations.correlate import Connection, Correlator, Evidence, Settings

MS = 1_000_000
S = 1_000_000_000
T0 = 1_750_000_000 * S
V1 = "v1"  # a call of a supported API: no occurrence
RATE_LIMIT = 5 * MS  # the kernel's: one reported send per connection per 5 ms


def conn(pod: str | None, at: int, *, close: int | None = None, pid: int = 1) -> Connection:
    namespace, name = pod.split("/") if pod else (None, None)
    return Connection(
        connect_ns=at,
        close_ns=close,
        pid=pid,
        comm="client",
        pod_namespace=namespace,
        pod_name=name,
        container="main" if pod else None,
        container_id=f"{pid:064x}" if pod else None,
    )


# -- the simulation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Persistent:
    """A pod holding one connection, opened ``opened`` after the start, calling ``api`` every
    ``period`` from ``phase``, each call up to ``jitter`` late."""

    pod: str
    api: str
    period: int
    phase: int
    jitter: int = 20 * MS
    opened: int = 0


@dataclass(frozen=True)
class PerCall:
    """A pod dialing per call (connect, send, close), calling ``api`` every ``period``."""

    pod: str
    api: str
    period: int
    phase: int
    jitter: int = 200 * MS


@dataclass
class Run:
    """What a simulation fed, and which client made each reported occurrence."""

    correlator: Correlator
    evidence: list[Evidence] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)

    def confidence(self, pod: str) -> float:
        rows = {row.identity.pod: row for row in self.correlator.attributions(V1ALPHA2)}
        return rows[pod].confidence if pod in rows else 0.0

    def fraction(self, pod: str) -> float:
        return self.causes.count(pod) / len(self.causes)


def simulate(
    clients: list[Persistent | PerCall],
    *,
    occurrences: int,
    poll: int = 3 * S,
    seed: int = 0,
    activity: bool = True,
    settings: Settings | None = None,
) -> Run:
    """Run the node until ``occurrences`` occurrences were reported. Every event up to a poll
    is fed before the poll's occurrence (the tracer's events arrive within milliseconds)."""
    rng = random.Random(seed)
    end = T0 + (occurrences + 2) * poll * 4
    # (time, order, what, client index, payload); sends are rate-limited per connection below.
    events: list[tuple[int, int, str, int, int]] = []
    calls: list[tuple[int, int]] = []  # (recorded by containerd, client index) of v1alpha2 calls
    connection_ids = iter(range(1_000_000))

    def add(at: int, what: str, index: int, payload: int = 0) -> None:
        events.append((at, len(events), what, index, payload))

    for index, client in enumerate(clients):
        if isinstance(client, Persistent):
            key = next(connection_ids)
            add(T0 + client.opened, "connect", index, key)
            add(T0 + client.opened + 200_000, "send", index, key)  # the HTTP/2 preface
        at = T0 + client.phase
        if isinstance(client, Persistent):
            while at <= T0 + client.opened + 1 * MS:  # its calls start after its connect
                at += client.period
        while at < end:
            sent = at + rng.randint(0, client.jitter)
            if isinstance(client, PerCall):
                key = next(connection_ids)
                add(sent - 300_000, "connect", index, key)
                add(sent - 200_000, "send", index, key)  # the preface, then the call
                add(sent + 3 * MS, "close", index, key)
            add(sent, "send", index, key)
            if client.api == V1ALPHA2:
                calls.append((sent + rng.randint(2 * MS, 7 * MS), index))
            at += client.period
    events.sort()
    calls.sort()

    correlator = Correlator(settings or Settings(closes_tracked=True), since_ns=T0)
    run = Run(correlator)
    handles: dict[int, int] = {}
    reported: dict[int, int] = {}  # connection -> its last reported send
    latest: tuple[int, int] | None = None
    next_event = 0
    poll_at = T0 + poll
    while len(run.evidence) < occurrences and poll_at < end:
        while next_event < len(events) and events[next_event][0] <= poll_at:
            at, _, what, index, key = events[next_event]
            next_event += 1
            pod = clients[index].pod
            if what == "connect":
                handles[key] = correlator.connected(conn(pod, at, pid=100 + index))
            elif what == "close":
                correlator.closed(handles[key], at)
            elif at - reported.get(key, -RATE_LIMIT) >= RATE_LIMIT:
                reported[key] = at
                if activity:
                    correlator.sent(handles[key], at)
        # containerd keeps the latest occurrence only; the poller reports a new one.
        done = [call for call in calls if call[0] <= poll_at]
        if done and done[-1] != latest:
            latest = done[-1]
            run.evidence.append(correlator.occurred(V1ALPHA2, latest[0]))
            run.causes.append(clients[latest[1]].pod)
        poll_at += poll
    assert len(run.evidence) == occurrences
    return run


AGENT = Persistent("legacy/agent", V1ALPHA2, 2 * S, 370 * MS)
MONITOR = Persistent("ops/monitor", V1, 730 * MS, 90 * MS, opened=10 * MS)  # faster than polls
SHIPPER = Persistent("logs/shipper", V1, 4_100 * MS, 1_500 * MS, opened=20 * MS)
PER_CALL = [
    PerCall("ci/prober", V1, 5 * S, 3_100 * MS),
    PerCall("ops/backup", V1, 7_300 * MS, 4_000 * MS),
]
NODE: list[Persistent | PerCall] = [AGENT, MONITOR, SHIPPER, *PER_CALL]
SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_caller_among_persistent_connections_stands_out(seed: int) -> None:
    """Three pods each holding one connection opened before the first call: after 12
    occurrences the v1alpha2 caller's confidence is at least 0.9, every other pod's at most
    0.1."""
    run = simulate(NODE, occurrences=12, seed=seed)
    assert all(evidence.active for evidence in run.evidence)
    assert run.confidence("legacy/agent") >= 0.9
    for pod in ("ops/monitor", "logs/shipper", "ci/prober", "ops/backup"):
        assert run.confidence(pod) <= 0.1, pod


def random_node(rng: random.Random) -> list[Persistent | PerCall]:
    """The caller, two persistent v1 clients (one up to 3x faster than any poll interval), two
    per-call v1 clients: periods and phases at random."""
    return [
        Persistent("legacy/agent", V1ALPHA2, 2 * S, rng.randint(0, 2000) * MS),
        Persistent("ops/monitor", V1, rng.randint(300, 1500) * MS, rng.randint(0, 1500) * MS),
        Persistent("logs/shipper", V1, rng.randint(2000, 9000) * MS, rng.randint(0, 5000) * MS),
        PerCall("ci/prober", V1, rng.randint(2000, 9000) * MS, rng.randint(0, 5000) * MS),
        PerCall("ops/backup", V1, rng.randint(2000, 9000) * MS, rng.randint(0, 5000) * MS),
    ]


@pytest.mark.parametrize("seed", range(40))
def test_the_caller_stands_out_on_random_nodes(seed: int) -> None:
    rng = random.Random(seed)
    node = random_node(rng)
    poll = rng.choice([500 * MS, 1 * S, 2 * S, 3 * S, 5 * S])
    run = simulate(node, occurrences=12, poll=poll, seed=seed)
    assert run.confidence("legacy/agent") >= 0.9
    assert max(run.confidence(client.pod) for client in node[1:]) <= 0.1


@pytest.mark.parametrize("seed", range(20))
def test_two_callers_on_random_nodes(seed: int) -> None:
    rng = random.Random(seed)
    node = random_node(rng)
    second = Persistent(
        "legacy/exporter", V1ALPHA2, rng.randint(1500, 6000) * MS, rng.randint(0, 3000) * MS
    )
    run = simulate([*node, second], occurrences=30, poll=rng.choice([1, 2, 3, 5]) * S, seed=seed)
    for pod in ("legacy/agent", "legacy/exporter"):
        assert run.confidence(pod) == pytest.approx(run.fraction(pod), abs=0.1), pod
    assert max(run.confidence(client.pod) for client in node[1:]) <= 0.1


@pytest.mark.parametrize("poll", [500 * MS, 1 * S, 5 * S])
def test_the_caller_stands_out_at_any_poll_interval(poll: int) -> None:
    run = simulate(NODE, occurrences=12, poll=poll)
    assert run.confidence("legacy/agent") >= 0.9
    assert max(run.confidence(client.pod) for client in NODE[1:]) <= 0.1


def test_without_activity_persistent_connections_split_every_occurrence() -> None:
    """What activity fixes: with lifetimes only, the three persistent connections share each
    occurrence and no pod stands out."""
    run = simulate(NODE, occurrences=12, activity=False)
    assert not any(evidence.active for evidence in run.evidence)
    assert run.confidence("legacy/agent") < 0.5
    assert run.confidence("ops/monitor") > 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_two_callers_each_get_the_fraction_they_cause(seed: int) -> None:
    second = Persistent("legacy/exporter", V1ALPHA2, 3_100 * MS, 1_100 * MS, opened=30 * MS)
    run = simulate([*NODE, second], occurrences=30, seed=seed)
    for pod in ("legacy/agent", "legacy/exporter"):
        assert 0.1 < run.fraction(pod) < 0.9
        assert run.confidence(pod) == pytest.approx(run.fraction(pod), abs=0.1), pod
    for pod in ("ops/monitor", "logs/shipper", "ci/prober", "ops/backup"):
        assert run.confidence(pod) <= 0.1, pod


def test_a_per_call_caller_among_persistent_connections() -> None:
    caller = PerCall("legacy/cron", V1ALPHA2, 4 * S, 1_000 * MS, jitter=300 * MS)
    run = simulate([caller, MONITOR, SHIPPER, *PER_CALL], occurrences=12)
    assert run.confidence("legacy/cron") >= 0.9
    assert run.confidence("ops/monitor") <= 0.1


def test_when_every_send_is_lost_the_fallback_judges_as_before() -> None:
    """Activity off or all its events lost: the lifetime/connect model alone, which the
    standings leave alone (the tests of that model pass unchanged)."""
    node: list[Persistent | PerCall] = [AGENT, *PER_CALL]
    weighed = simulate(node, occurrences=12, activity=False)
    plain = simulate(
        node,
        occurrences=12,
        activity=False,
        settings=Settings(closes_tracked=True, standings=False),
    )
    assert weighed.correlator.attributions() == plain.correlator.attributions()
    assert weighed.evidence == plain.evidence
    assert not any(evidence.active for evidence in weighed.evidence)
    # One persistent caller and per-call innocents: the lifetime model names it.
    assert weighed.confidence("legacy/agent") > 0.8


# -- standings ----------------------------------------------------------------------------------


def tie_then_clean(settings: Settings, ties: int = 1) -> tuple[Correlator, list[Evidence]]:
    """The caller and a v1 client send alike before the first ``ties`` occurrences; the
    caller alone before the next ones, up to 12."""
    correlator = Correlator(settings)
    caller = correlator.connected(conn("legacy/agent", T0, pid=1))
    other = correlator.connected(conn("ops/monitor", T0, pid=2))
    evidence = []
    for k in range(12):
        t = T0 + (k + 1) * 2 * S
        correlator.sent(caller, t - 4 * MS)
        correlator.sent(other, t - (4 * MS if k < ties else 400 * MS))
        evidence.append(correlator.occurred(V1ALPHA2, t))
    return correlator, evidence


def test_a_tie_goes_to_the_identity_that_explains_the_other_occurrences() -> None:
    correlator, evidence = tie_then_clean(Settings(closes_tracked=True))
    assert shares(evidence[0]) == {"legacy/agent": 0.5, "ops/monitor": 0.5}  # nothing known yet
    rows = {row.identity.pod: row for row in correlator.attributions(V1ALPHA2)}
    agent, monitor = rows["legacy/agent"], rows["ops/monitor"]
    # Re-estimated: the first tie now goes (S' + 1) : 1 = 12 : 1 to the caller.
    assert agent.evidence == pytest.approx(11 + 12 / 13, abs=0.01)
    assert agent.confidence >= 0.9 and monitor.confidence <= 0.01
    assert (agent.occurrences, monitor.occurrences) == (12, 12)


def test_without_standings_a_tie_stays_split() -> None:
    correlator, _ = tie_then_clean(Settings(closes_tracked=True, standings=False))
    rows = {row.identity.pod: row for row in correlator.attributions(V1ALPHA2)}
    assert rows["legacy/agent"].evidence == pytest.approx(11.5)
    assert rows["legacy/agent"].confidence == pytest.approx(11.5 / 13)
    assert rows["legacy/agent"].confidence < 0.9


def test_occurrences_older_than_the_history_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only active occurrences with rivals enter the history; the two oldest of five ties
    leave it while the standings are still even, and keep their halves."""
    monkeypatch.setattr(correlate, "HISTORY", 3)
    correlator, _ = tie_then_clean(Settings(closes_tracked=True), ties=5)
    agent = {row.identity.pod: row for row in correlator.attributions(V1ALPHA2)}["legacy/agent"]
    assert len(correlator._history[V1ALPHA2]) == 3
    kept = agent.evidence - 7 - 2 * 0.5  # the three ties still in the history
    assert 3 * 0.8 < kept < 3
    monkeypatch.setattr(correlate, "HISTORY", 256)
    unbounded, _ = tie_then_clean(Settings(closes_tracked=True), ties=5)
    row = {row.identity.pod: row for row in unbounded.attributions(V1ALPHA2)}["legacy/agent"]
    assert row.evidence > agent.evidence


def test_a_new_identity_is_not_favoured_by_its_empty_history() -> None:
    """Leaving the occurrence out, a newcomer and an old innocent differ only by what their
    other occurrences say: the newcomer nothing (1/2), the innocent 0 of N (1/(N+2))."""
    correlator = tracked()
    old = correlator.connected(conn("ops/old", T0, pid=1))
    for k in range(4):  # four occurrences the old one never explains
        t = T0 + (k + 1) * S
        correlator.sent(old, t - 500 * MS)
        correlator.occurred(V1ALPHA2, t)
    new = correlator.connected(conn("ops/new", T0 + 5 * S, pid=2))
    t = T0 + 6 * S
    correlator.sent(old, t - 3 * MS)
    correlator.sent(new, t - 3 * MS)
    by_pod = shares(correlator.occurred(V1ALPHA2, t))
    # ops/old: S' = 4 (it was the lone candidate of the four), N' = 4: (4 + 1) / 6; new: 1/2.
    assert by_pod["ops/old"] / by_pod["ops/new"] == pytest.approx((5 / 6) / (1 / 2), rel=0.01)


# -- the activity density ----------------------------------------------------------------------


def shares(evidence: Evidence) -> dict[str | None, float]:
    return {c.identity.pod: c.share for c in evidence.candidates}


def tracked() -> Correlator:
    return Correlator(Settings(closes_tracked=True))


def test_only_active_connections_share_an_occurrence() -> None:
    correlator = tracked()
    quiet = correlator.connected(conn("ops/quiet", T0, pid=1))
    busy = correlator.connected(conn("ops/busy", T0, pid=2))
    correlator.sent(quiet, T0 + 1 * MS)
    correlator.sent(busy, T0 + 9 * S)
    evidence = correlator.occurred(V1ALPHA2, T0 + 9 * S + 900 * MS)  # a send 900 ms before
    assert evidence.active
    assert shares(evidence) == {"ops/busy": 1.0}
    # Out of every activity window: the fallback, both open connections.
    evidence = correlator.occurred(V1ALPHA2, T0 + 12 * S)
    assert not evidence.active
    assert set(shares(evidence)) == {"ops/quiet", "ops/busy"}


def test_the_activity_density() -> None:
    """Flat over the kernel's 5 ms rate limit, then e-fold per 10 ms; a send after the
    occurrence e-folds per 1 ms."""
    t = T0 + 10 * S

    def weights(*delays: int) -> list[float]:
        correlator = tracked()
        for pid, delay in enumerate(delays):
            correlator.sent(correlator.connected(conn(f"ns/pod-{pid}", T0, pid=pid)), t - delay)
        evidence = correlator.occurred(V1ALPHA2, t)
        by_pod = shares(evidence)
        return [by_pod[f"ns/pod-{pid}"] / by_pod["ns/pod-0"] for pid in range(len(delays))]

    assert weights(1 * MS, 5 * MS, 0) == pytest.approx([1, 1, 1])
    assert weights(3 * MS, 15 * MS, 25 * MS) == pytest.approx([1, math.exp(-1), math.exp(-2)])
    assert weights(3 * MS, -2 * MS) == pytest.approx([1, math.exp(-2)])


def test_the_best_send_counts_not_the_number_of_sends() -> None:
    correlator = tracked()
    chatty = correlator.connected(conn("ops/chatty", T0, pid=1))
    caller = correlator.connected(conn("legacy/agent", T0, pid=2))
    t = T0 + 5 * S
    for k in range(1, 150):  # every 6 ms for 900 ms, the last 12 ms before t
        correlator.sent(chatty, t - k * 6 * MS)
    correlator.sent(caller, t - 4 * MS)
    by_pod = shares(correlator.occurred(V1ALPHA2, t))
    assert by_pod["legacy/agent"] / by_pod["ops/chatty"] == pytest.approx(math.exp(0.1), rel=0.01)


def test_the_nearest_sends_on_both_sides_are_weighed() -> None:
    correlator = tracked()
    handle = correlator.connected(conn("legacy/agent", T0))
    other = correlator.connected(conn("ops/other", T0, pid=2))
    t = T0 + 5 * S
    correlator.sent(handle, t - 500 * MS)
    correlator.sent(handle, t + 1 * MS)  # its best: after t, by 1 ms
    correlator.sent(other, t - 6 * MS)
    by_pod = shares(correlator.occurred(V1ALPHA2, t))
    ratio = math.exp(-1) / math.exp(-0.1)
    assert by_pod["legacy/agent"] / by_pod["ops/other"] == pytest.approx(ratio, rel=0.01)


def test_sends_outside_the_lifetime_or_window_do_not_make_a_candidate_active() -> None:
    correlator = tracked()
    closed = correlator.connected(conn("ops/closed", T0, pid=1))
    correlator.sent(closed, T0 + 1 * S)
    correlator.closed(closed, T0 + 1 * S + 2 * MS)
    later = correlator.connected(conn("ops/later", T0 + 1 * S + 400 * MS, pid=2))
    correlator.sent(later, T0 + 1 * S + 500 * MS)  # after t, beyond the slack
    evidence = correlator.occurred(V1ALPHA2, T0 + 1 * S + 300 * MS)
    assert not evidence.active and evidence.candidates == ()
    assert correlator.unexplained(V1ALPHA2) == 1


def test_a_send_extends_an_unknown_close_past_the_connect_window() -> None:
    correlator = Correlator()  # closes not tracked: an unknown close ends the window at 2 s
    handle = correlator.connected(conn("legacy/agent", T0))
    correlator.sent(handle, T0 + 20 * S)
    evidence = correlator.occurred(V1ALPHA2, T0 + 20 * S + 4 * MS)
    assert evidence.active and shares(evidence) == {"legacy/agent": 1.0}
    assert not correlator.occurred(V1ALPHA2, T0 + 22 * S).candidates


def test_sends_of_unknown_handles_are_ignored_and_out_of_order_ones_sorted() -> None:
    correlator = tracked()
    correlator.sent(12345, T0)
    handle = correlator.connected(conn("legacy/agent", T0))
    for at in (30, 10, 20, 10):
        correlator.sent(handle, T0 + at * MS)
    assert list(correlator._connections[handle].sends or ()) == [
        T0 + 10 * MS,
        T0 + 10 * MS,
        T0 + 20 * MS,
        T0 + 30 * MS,
    ]


def test_sends_are_kept_for_the_horizon_and_at_most_max_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    correlator = Correlator(Settings(closes_tracked=True, horizon_ns=10 * S))
    handle = correlator.connected(conn("ops/chatty", T0))
    for k in range(6_000):  # 5 ms apart: 30 s
        correlator.sent(handle, T0 + k * 5 * MS)
    sends = correlator._connections[handle].sends
    assert sends is not None and len(sends) == correlate.MAX_SENDS
    correlator.occurred(V1ALPHA2, T0 + 30 * S)
    # What a non-late occurrence's activity window can reach: the horizon and the window.
    assert len(sends) <= (10 + 1) * 200 + 1
    monkeypatch.setattr(correlate, "MAX_SENDS", 4)
    small = Correlator()
    handle = small.connected(conn("ops/chatty", T0))
    for k in range(10):
        small.sent(handle, T0 + k * MS)
    small.sent(handle, T0 - 1 * MS)  # older than everything kept, the deque full: dropped
    small.sent(handle, T0 + 7 * MS + 500_000)  # out of order: the oldest goes
    assert list(small._connections[handle].sends or ()) == [
        T0 + 7 * MS,
        T0 + 7 * MS + 500_000,
        T0 + 8 * MS,
        T0 + 9 * MS,
    ]


# -- missed closes: dormant connections ----------------------------------------------------------


def test_an_open_connection_that_never_sent_goes_dormant() -> None:
    """Once sends are seen, a connection open for ``max_open`` without a single send is no
    longer a fallback candidate (its close was likely missed); a send wakes it."""
    correlator = Correlator(Settings(closes_tracked=True, max_open_ns=60 * S))
    stale = correlator.connected(conn("ops/stale", T0, pid=1))
    live = correlator.connected(conn("legacy/agent", T0, pid=2))
    correlator.sent(live, T0 + 1 * MS)
    assert set(shares(correlator.occurred(V1ALPHA2, T0 + 30 * S))) == {
        "ops/stale",
        "legacy/agent",
    }
    evidence = correlator.occurred(V1ALPHA2, T0 + 90 * S)
    assert not evidence.active and shares(evidence) == {"legacy/agent": 1.0}
    assert (len(correlator), correlator.dormant) == (1, 1)
    correlator.sent(stale, T0 + 95 * S)
    assert (len(correlator), correlator.dormant) == (2, 0)
    assert shares(correlator.occurred(V1ALPHA2, T0 + 95 * S + 3 * MS)) == {"ops/stale": 1.0}


def test_a_dormant_connection_is_forgotten_on_its_close_and_at_the_cap() -> None:
    correlator = Correlator(Settings(closes_tracked=True, max_open_ns=60 * S, max_dormant=2))
    handles = [correlator.connected(conn(f"ns/pod-{k}", T0 + k * MS, pid=k)) for k in range(4)]
    correlator.sent(correlator.connected(conn("legacy/agent", T0, pid=9)), T0 + 1 * MS)
    correlator.occurred(V1ALPHA2, T0 + 90 * S)
    assert correlator.dormant == 2  # the two oldest forgotten
    correlator.closed(handles[3], T0 + 91 * S)
    assert correlator.dormant == 1
    correlator.sent(handles[0], T0 + 92 * S)  # forgotten: nothing to wake
    assert (len(correlator), correlator.dormant) == (1, 1)


def test_without_any_send_no_connection_goes_dormant() -> None:
    correlator = Correlator(Settings(closes_tracked=True, max_open_ns=60 * S))
    correlator.connected(conn("legacy/agent", T0))
    for k in range(1, 6):
        evidence = correlator.occurred(V1ALPHA2, T0 + k * 600 * S)
        assert shares(evidence) == {"legacy/agent": 1.0}
    assert correlator.dormant == 0


def test_bad_activity_settings() -> None:
    with pytest.raises(ValueError, match="activity"):
        Settings(activity_tau_ns=0)
    with pytest.raises(ValueError, match="limit"):
        Settings(activity_limit_ns=-1)
    with pytest.raises(ValueError, match="shorter"):
        Settings(activity_window_ns=5 * MS, activity_limit_ns=5 * MS)
    with pytest.raises(ValueError, match="max open"):
        Settings(max_open_ns=0)
