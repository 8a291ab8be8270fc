"""Which clients cause a deprecation warning: containerd's occurrences matched with the
connections to its socket that the tracer saw, and with the requests it saw them send.

containerd says only *when* a deprecated API was last called (``last_occurrence``, from the
host's CLOCK_REALTIME, 2-7 ms after the client sent the call); the tracer says who connected to
the socket, when, and (with activity on) when a followed connection sent something (the same
clock). This module is the matching, with no I/O and no clock of its own: every time is passed
in, in ns since the epoch. Feed it connections as the tracer sees them (``connected``;
``sent`` for each reported send; ``closed`` when a close is known) and each new occurrence
once (``occurred``; the poller dedups them); read the ranked attributions (``attributions``).

Two models judge an occurrence at ``t``: activity when any candidate sent something around
``t``, else lifetimes and connect times (the fallback: events lost, a kernel without the
send tracepoint, activity off).

Activity. A connection is an *active candidate* when it sent in ``[t - activity_window,
t + slack]`` (``activity_window`` default 1 s) and ``t`` is in its lifetime (below). If any
connection is active, only the active ones share the occurrence: a client holding one
connection for days is a candidate only around its own calls, so two or three such clients
no longer split every occurrence. The density of "this connection's send made the call" is
taken at its best send ``s`` (the nearest on each side of ``t``; a gRPC call is several sends
(HEADERS, DATA, later WINDOW_UPDATE and PING acks) that the kernel's rate limit folds into a
report per 5 ms, so a sum over sends would count frames and bursts and favour a chatty
connection by volume; one send caused the call), on ``d = t - s``:

- ``0 <= d <= activity_limit`` (default 5 ms): flat. The kernel reports at most one send per
  connection per ``activity_limit``, so the send that made the call may be up to that much
  after the reported one;
- ``d > activity_limit``: ``exp(-(d - activity_limit) / activity_tau)``, ``activity_tau``
  default 10 ms: containerd records the call 2-7 ms after it was sent;
- ``d < 0`` (a send after ``t``): ``exp(d / activity_skew)``, ``activity_skew`` default 1 ms.
  The tracer turns CLOCK_MONOTONIC into wall time with an offset measured once, and NTP slews
  both clocks alike, so a send after ``t`` did not make the call unless the clock was stepped.

normalized to a density in 1/s over ``[-inf, activity_window]``. The ratio of two connections'
densities depends only on how far apart their sends are, not on a skew common to both: a
send 10 ms before another's, both past the flat part, explains ``t`` e^1 times worse.

Lifetimes and connect times (the fallback). A connection is a candidate for an occurrence at
``t`` when it can have carried the call:

- its lifetime is known (closed, or ``closes_tracked`` and still open): ``connect - slack <= t
  <= close + slack`` (open: no upper bound);
- its close is unknown: ``connect - slack <= t <= connect + window``.

``slack`` (default 50 ms) absorbs the skew between containerd's timestamps and the tracer's
(both CLOCK_REALTIME of the same host, so it is small); ``window`` (default 2 s) is how long
after connecting a client with an unknown close may still make the call. Their densities:

- known lifetime: the call came at a uniformly random moment of it, and its recorded time is
  off by a Laplace-distributed skew of scale ``skew`` (default 5 ms: containerd records the call
  while the connection is open, on the same host's clock): ``(G(t - connect) - G(t - close)) /
  lifetime``, ``G`` the skew's distribution function (an open connection's lifetime is the time
  from its connect to ``t``). Inside a long lifetime that is ``1 / lifetime``: a connection open
  for 20 ms weighs ~500 times one open for 10 s. A short connection ending 50 ms before ``t``
  explains it ~10,000 times worse than one around ``t``;
- unknown close: the call came soon after the connect, exponentially distributed with mean
  ``tau`` (default 25 ms) and cut at ``window``: ``exp(-d / tau) / (tau (1 - exp(-window /
  tau)))`` with ``d = |t - connect|`` (a connect up to ``slack`` after ``t`` is clock skew,
  as unlikely as one as long before). gRPC clients connect on their first call, and
  over a unix socket the call reaches containerd a few milliseconds later; a connect 200 ms
  before ``t`` explains it ~2000 times worse than one 5 ms before.

A connect is not a send: the kernel reports the first send of every followed connection (a
gRPC client sends its preface at once), so a per-call client is active by its own report.
(In both models a lone candidate gets the whole unit however weak its density: the densities
only rank rivals. A lost send report can thus hand an occurrence to the one connection that
sent within the activity window.)

Share of one occurrence. Each occurrence is one unit of evidence, split among its candidates in
proportion to how well each explains ``t``: if exactly one of the candidates made the call, the
posterior probability that it was ``c`` is ``f(c) / sum(f)``: that is ``c``'s share. An
identity (pod namespace and name, container name and comm; host processes have only a comm)
gets the sum of its connections' shares (the density of the identity ``f`` above). An
occurrence with no candidate is *unexplained*: its unit goes to nobody.

Standings (``standings``, on by default; the fallback's occurrences keep ``f / sum(f)``, as
they always had). Two sends a few milliseconds apart explain ``t`` alike: a connection calling a
supported API every 700 ms sends within 10 ms before a given occurrence about once in 70, and
such a tie in the first occurrences would cost the real caller half a unit it never gets back.
But the other occurrences say who calls: an active occurrence's share for ``c`` is proportional
to ``f(c) (S' + 1) / (N' + 2)``, ``S'`` and ``N'`` ``c``'s evidence and considered occurrences
(below) leaving this occurrence out: the probability of ``c`` having caused it given all the
others, under a uniform prior on the rate at which ``c`` causes occurrences (a collapsed Gibbs
conditional; alone, or among identities with no history, this is ``f / sum(f)`` again). Since
``S'`` sums the other occurrences' shares, the shares of the latest ``HISTORY`` (64) active
occurrences with rivals per deprecation are solved together: at each active occurrence, up to 3
passes over them from the last solution (fewer once no share moves by 1e-5), so that the
solution is refined as occurrences come; older ones keep the shares they had (by then the
standings that decide a tie are settled). A tie then goes 9:1 to a caller that
explained 8 of 8 other occurrences against one that explained none of 8, and two callers of the
same API split their ties by the rate each shows. Candidates with a density share under 1e-9
are left out of it. The fallback is left as it was: its candidates are
whoever had a connection open or opened, whose standings say less.

Confidence. For a deprecation ``D`` and an identity ``X``::

    confidence(D, X) = S / (N + prior)

``S`` is the sum of ``X``'s shares over ``D``'s occurrences; ``N`` is the number of ``D``'s
occurrences since ``X`` was first seen connecting (the ones ``X`` could have caused, whether it
was a candidate or not); ``prior`` is 1. It estimates the fraction of ``D``'s occurrences that
``X`` causes (the posterior mean under a Beta(0, prior) prior, with the shares as expected
counts), so it is in [0, 1): it grows with each occurrence that ``X`` alone explains (1 of 1:
0.5; 3 of 3: 0.75; 10 of 10: 0.91), falls with each occurrence ``X`` is absent from (``N`` grows,
``S`` does not), and stays low for an identity that is only ever there alongside closer or many
other candidates (small shares). Two clients of the same deprecated API on the same node each
get the fraction they cause. ``occurrences`` counts the occurrences ``X`` was a candidate for.

Bounds. An occurrence is *late* (not counted) when it is older than ``horizon`` (default 30 s:
more than the poll interval plus the window) before the latest time fed in, or than ``since``:
the connections that could explain it may be gone. Connections are kept only while a non-late
occurrence could still fall in their lifetime, window or activity window, and at most
``max_connections`` (oldest dropped first); a connection's sends at most ``MAX_SENDS`` (the
latest: 10 s at the kernel's rate limit, more than a poll interval), and only those a non-late
occurrence's activity window can reach; identities at most ``max_identities`` (the least
recently connected dropped first, with their scores).

A missed close (the kernel's LRU map evicted the socket, an event was lost) would leave a
connection open for ever, a candidate of every fallback occurrence. Once any send was seen
(activity works), a connection still open ``max_open`` (default 10 min) after its connect
without a single send is *dormant*: no longer a candidate, since a live gRPC client sends
within milliseconds of connecting. A send wakes it, a close forgets it; at most
``max_dormant`` are kept (oldest forgotten first). Without any send seen, no connection is
dormant: the fallback is as it was. (The daemon's feed also checks ``/proc`` for the sockets
of open connections and closes those that are gone.)
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

import msgspec

_NS: Final = 1_000_000_000
# A connection's reported sends kept at most: 10 s at the kernel's rate limit (one per 5 ms).
MAX_SENDS: Final = 2048
# Active occurrences with rivals, per deprecation, whose shares are re-estimated from the
# standings (older ones keep the shares they had when they left), and the passes of one
# re-estimation at most.
HISTORY: Final = 64
_PASSES: Final = 3
_SETTLED: Final = 1e-5  # a pass that moves no share by more than this ends them
# A candidate's density share under this is left out of the re-estimation: even weighed by the
# standings it stays negligible, and the rivals whose sends are over ~200 ms from the
# occurrence then cost the re-estimation nothing.
_NEGLIGIBLE: Final = 1e-9


class Identity(NamedTuple):
    """Who connected: a container's pod and name, and the process's comm. A host process (or
    one nobody could name) has only its comm."""

    pod_namespace: str | None
    pod_name: str | None
    container: str | None
    comm: str

    @property
    def pod(self) -> str | None:
        """``<namespace>/<name>``, ``None`` for a host process."""
        if self.pod_namespace is None and self.pod_name is None:
            return None
        return f"{self.pod_namespace or ''}/{self.pod_name or ''}"


class Connection(msgspec.Struct, frozen=True, kw_only=True):
    """One connection to the containerd socket: when it was opened and, if known, closed (ns
    since the epoch), by which process, and who that is."""

    connect_ns: int
    close_ns: int | None = None
    pid: int
    comm: str
    pod_namespace: str | None = None
    pod_name: str | None = None
    container: str | None = None
    container_id: str | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.pod_namespace, self.pod_name, self.container, self.comm)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The model's constants (see the module's documentation); times in ns."""

    window_ns: int = 2 * _NS
    slack_ns: int = 50_000_000
    skew_ns: int = 5_000_000
    tau_ns: int = 25_000_000
    horizon_ns: int = 30 * _NS
    prior: float = 1.0
    closes_tracked: bool = False
    max_connections: int = 100_000
    max_identities: int = 1024
    activity_window_ns: int = 1 * _NS
    activity_tau_ns: int = 10_000_000
    activity_limit_ns: int = 5_000_000
    activity_skew_ns: int = 1_000_000
    max_open_ns: int = 600 * _NS
    max_dormant: int = 4096
    standings: bool = True

    def __post_init__(self) -> None:
        if min(self.window_ns, self.tau_ns, self.horizon_ns, self.skew_ns) <= 0:
            raise ValueError("window, tau, horizon and skew must be positive")
        if min(self.activity_window_ns, self.activity_tau_ns, self.activity_skew_ns) <= 0:
            raise ValueError("the activity window, tau and skew must be positive")
        if min(self.slack_ns, self.activity_limit_ns) < 0:
            raise ValueError("slack and the activity limit must not be negative")
        if self.activity_limit_ns >= self.activity_window_ns:
            raise ValueError("the activity limit must be shorter than its window")
        if self.prior <= 0 or min(self.max_connections, self.max_identities) < 1:
            raise ValueError("prior and the caps must be positive")
        if self.max_open_ns <= 0 or self.max_dormant < 0:
            raise ValueError("max open must be positive, max dormant not negative")


class Candidate(NamedTuple):
    """An identity's share of one occurrence, from ``connections`` of its connections."""

    identity: Identity
    share: float
    connections: int


class Evidence(NamedTuple):
    """What one occurrence said: its candidates, largest share first (none: unexplained);
    ``late`` when it came too late to be judged (then it was not counted); ``active`` when the
    candidates are the connections that sent around it (else the fallback model judged)."""

    deprecation: str
    time_ns: int
    candidates: tuple[Candidate, ...]
    late: bool = False
    active: bool = False


class Attribution(msgspec.Struct, frozen=True, kw_only=True):
    """An identity's standing for one deprecation: ``confidence`` in [0, 1); ``occurrences``
    it was a candidate for, of ``considered`` it could have caused; ``evidence``, the sum of its
    shares; the latest occurrence it was a candidate for; the container id and pid of its
    latest candidate connection."""

    deprecation: str
    identity: Identity
    confidence: float
    occurrences: int
    considered: int
    evidence: float
    last_seen_ns: int
    container_id: str | None = None
    pid: int | None = None


class _Open:
    """A kept connection; its close may become known later, its sends (sorted) are added as
    they are reported."""

    __slots__ = ("close_ns", "connection", "sends")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.close_ns = connection.close_ns
        self.sends: deque[int] | None = None  # none reported yet

    def add_send(self, time_ns: int) -> None:
        """Adds a send in order (the ring buffer's order is the CPUs' interleaving)."""
        sends = self.sends
        if sends is None:
            sends = self.sends = deque(maxlen=MAX_SENDS)
        if not sends or time_ns >= sends[-1]:
            sends.append(time_ns)  # the usual order; a full deque drops its oldest
        elif len(sends) < MAX_SENDS:
            sends.insert(bisect.bisect_right(sends, time_ns), time_ns)
        elif time_ns > sends[0]:
            sends.popleft()
            sends.insert(bisect.bisect_right(sends, time_ns), time_ns)


class _Seen:
    """An identity: the occurrences counted per deprecation when it was first seen."""

    __slots__ = ("base",)

    def __init__(self, counts: dict[str, int]) -> None:
        self.base = dict(counts)


class _Score:
    """One (deprecation, identity) pair's running totals."""

    __slots__ = ("container_id", "evidence", "last_seen_ns", "occurrences", "pid")

    def __init__(self) -> None:
        self.evidence = 0.0
        self.occurrences = 0
        self.last_seen_ns = 0
        self.container_id: str | None = None
        self.pid: int | None = None


class _Judged:
    """An active occurrence with rivals, in the history: its candidates (the negligible ones
    apart), their scores, their density shares (their shares under equal standings) and their
    shares now."""

    __slots__ = ("densities", "identities", "scores", "shares")

    def __init__(self) -> None:
        self.identities: list[Identity] = []
        self.scores: list[_Score] = []
        self.densities: list[float] = []
        self.shares: list[float] = []

    def add(self, identity: Identity, score: _Score, density: float) -> None:
        self.identities.append(identity)
        self.scores.append(score)
        self.densities.append(density)
        self.shares.append(density)

    def forget(self, identity: Identity) -> None:
        """``identity`` is forgotten, with its share (a re-estimation shares the occurrence
        among the others)."""
        if identity in self.identities:
            k = self.identities.index(identity)
            del self.identities[k], self.scores[k], self.densities[k], self.shares[k]


class Correlator:
    """The matching engine. Not thread-safe: one owner feeds it.

    ``since_ns``: when connections started to be fed (occurrences before it are late).
    """

    def __init__(self, settings: Settings | None = None, *, since_ns: int | None = None) -> None:
        self.settings = settings or Settings()
        self.since_ns = since_ns
        self._connections: dict[int, _Open] = {}
        self._dormant: dict[int, _Open] = {}  # open, never sent, older than max_open
        self._next_handle = 0
        self._latest_ns = since_ns if since_ns is not None else -(2**63)
        self._identities: dict[Identity, _Seen] = {}
        self._scores: dict[str, dict[Identity, _Score]] = {}
        self._history: dict[str, deque[_Judged]] = {}
        self._counts: dict[str, int] = {}
        self._unexplained: dict[str, int] = {}
        self._late: dict[str, int] = {}
        self._sends_seen = False
        settings = self.settings
        tau = settings.tau_ns / _NS
        self._exp_norm = 1.0 / (tau * -math.expm1(-settings.window_ns / settings.tau_ns))
        # The activity density's integral over [-inf, activity_window], in s.
        tail = -math.expm1(
            -(settings.activity_window_ns - settings.activity_limit_ns) / settings.activity_tau_ns
        )
        area = settings.activity_skew_ns + settings.activity_limit_ns
        self._activity_norm = _NS / (area + settings.activity_tau_ns * tail)

    # -- feeding -------------------------------------------------------------------------------

    def connected(self, connection: Connection) -> int:
        """Record a connection; the handle is for ``sent`` and ``closed``."""
        settings = self.settings
        handle = self._next_handle
        self._next_handle += 1
        self._connections[handle] = _Open(connection)
        while len(self._connections) > settings.max_connections:
            del self._connections[next(iter(self._connections))]
        identity = connection.identity
        seen = self._identities.pop(identity, None)  # re-inserted last: most recent
        self._identities[identity] = _Seen(self._counts) if seen is None else seen
        while len(self._identities) > settings.max_identities:
            self._forget(next(iter(self._identities)))
        self._advance(connection.connect_ns)
        return handle

    def sent(self, handle: int, time_ns: int) -> None:
        """The connection ``handle`` sent something (a request, or part of one) at ``time_ns``
        (ignored once it is forgotten; a dormant one wakes up)."""
        kept = self._connections.get(handle)
        if kept is None:
            kept = self._dormant.pop(handle, None)
            if kept is None:
                return
            self._connections[handle] = kept
        self._sends_seen = True
        kept.add_send(time_ns)  # the old ones go at the next occurrence, or at MAX_SENDS
        self._advance(time_ns)

    def closed(self, handle: int, close_ns: int) -> None:
        """The connection ``handle`` was closed at ``close_ns`` (ignored once it is forgotten;
        a dormant one is forgotten)."""
        kept = self._connections.get(handle)
        if kept is not None:
            kept.close_ns = close_ns
        else:
            self._dormant.pop(handle, None)
        self._advance(close_ns)

    def occurred(self, deprecation: str, time_ns: int) -> Evidence:
        """A new occurrence of ``deprecation`` at ``time_ns``: its evidence, now counted."""
        self._advance(time_ns)
        self._prune()
        if time_ns < self._oldest_judged():
            self._late[deprecation] = self._late.get(deprecation, 0) + 1
            return Evidence(deprecation, time_ns, (), late=True)
        self._counts[deprecation] = self._counts.get(deprecation, 0) + 1
        active = True
        judged = self._judge(time_ns, self._activity_density) if self._sends_seen else None
        if not judged:
            active = False
            judged = self._judge(time_ns, self._density)
        weights: dict[Identity, float] = {}
        counts: dict[Identity, int] = {}
        latest: dict[Identity, Connection] = {}
        for connection, weight in judged:
            identity = connection.identity
            weights[identity] = weights.get(identity, 0.0) + weight
            counts[identity] = counts.get(identity, 0) + 1
            if identity not in latest or connection.connect_ns >= latest[identity].connect_ns:
                latest[identity] = connection
        total = sum(weights.values())
        if total <= 0.0:
            self._unexplained[deprecation] = self._unexplained.get(deprecation, 0) + 1
            return Evidence(deprecation, time_ns, ())
        densities = {identity: weight / total for identity, weight in weights.items()}
        scores = self._scores.setdefault(deprecation, {})
        candidates = sorted(
            (Candidate(i, density, counts[i]) for i, density in densities.items()),
            key=_by_share,
        )
        for identity, density, _ in candidates:
            score = scores.get(identity)
            if score is None:
                score = scores[identity] = _Score()
                self._cap(deprecation, identity)
            score.evidence += density  # a re-estimation may move it
            score.occurrences += 1
            score.last_seen_ns = max(score.last_seen_ns, time_ns)
            score.container_id = latest[identity].container_id
            score.pid = latest[identity].pid
        if active and self.settings.standings:
            candidates = self._weigh(deprecation, candidates)
        return Evidence(deprecation, time_ns, tuple(candidates), active=active)

    # -- reading -------------------------------------------------------------------------------

    def attributions(self, deprecation: str | None = None) -> list[Attribution]:
        """Every identity's standing, for one deprecation or all: by deprecation id, then by
        confidence (highest first)."""
        prior = self.settings.prior
        ids = sorted(self._scores) if deprecation is None else [deprecation]
        result: list[Attribution] = []
        for name in ids:
            count = self._counts.get(name, 0)
            considered = {
                identity: self._considered(name, count, identity, score)
                for identity, score in self._scores.get(name, {}).items()
            }
            rows = [
                Attribution(
                    deprecation=name,
                    identity=identity,
                    confidence=score.evidence / (considered[identity] + prior),
                    occurrences=score.occurrences,
                    considered=considered[identity],
                    evidence=score.evidence,
                    last_seen_ns=score.last_seen_ns,
                    container_id=score.container_id,
                    pid=score.pid,
                )
                for identity, score in self._scores.get(name, {}).items()
            ]
            rows.sort(key=lambda row: (-row.confidence, -row.last_seen_ns, _identity_key(row)))
            result.extend(rows)
        return result

    def counted(self, deprecation: str) -> int:
        """How many occurrences of ``deprecation`` were counted."""
        return self._counts.get(deprecation, 0)

    def unexplained(self, deprecation: str) -> int:
        """How many counted occurrences had no candidate at all."""
        return self._unexplained.get(deprecation, 0)

    def late(self, deprecation: str) -> int:
        """How many occurrences came too late to be judged (not counted)."""
        return self._late.get(deprecation, 0)

    def __len__(self) -> int:
        """The connections kept (dormant ones apart)."""
        return len(self._connections)

    @property
    def dormant(self) -> int:
        """The dormant connections kept: open, never sent, older than ``max_open``."""
        return len(self._dormant)

    @property
    def identities(self) -> int:
        """The identities kept."""
        return len(self._identities)

    # -- internals -----------------------------------------------------------------------------

    def _judge(
        self, time_ns: int, density: Callable[[_Open, int], float]
    ) -> list[tuple[Connection, float]]:
        """The connections with a positive density at ``time_ns``, with it."""
        judged = []
        for kept in self._connections.values():
            weight = density(kept, time_ns)
            if weight > 0.0:
                judged.append((kept.connection, weight))
        return judged

    def _activity_density(self, kept: _Open, time_ns: int) -> float:
        """The activity model's density (1/s) at its best send in the activity window; 0
        outside its lifetime or without a send in the window."""
        sends = kept.sends
        if not sends:
            return 0.0
        settings = self.settings
        slack = settings.slack_ns
        if time_ns < kept.connection.connect_ns - slack:
            return 0.0
        if kept.close_ns is not None and time_ns > kept.close_ns + slack:
            return 0.0
        after = bisect.bisect_right(sends, time_ns)  # sends[after - 1] <= t < sends[after]
        best = 0.0
        if after > 0:
            since = time_ns - sends[after - 1]
            if since <= settings.activity_window_ns:
                excess = max(0, since - settings.activity_limit_ns)
                best = math.exp(-excess / settings.activity_tau_ns)
        if after < len(sends):
            early = sends[after] - time_ns
            if early <= slack:
                best = max(best, math.exp(-early / settings.activity_skew_ns))
        return self._activity_norm * best

    def _density(self, kept: _Open, time_ns: int) -> float:
        settings = self.settings
        connect = kept.connection.connect_ns
        if time_ns < connect - settings.slack_ns:
            return 0.0
        close = kept.close_ns
        if close is None and settings.closes_tracked:
            close = max(time_ns, connect)  # still open: its lifetime so far
        if close is not None:
            if time_ns > close + settings.slack_ns:
                return 0.0
            return _lifetime_density(time_ns - connect, time_ns - close, settings.skew_ns)
        delay = time_ns - connect
        if delay > settings.window_ns:
            return 0.0
        return self._exp_norm * math.exp(-abs(delay) / settings.tau_ns)

    def _weigh(self, deprecation: str, candidates: list[Candidate]) -> list[Candidate]:
        """The shares of an active occurrence weighed by the standings, the history's
        re-estimated with them; ``candidates`` with their density shares, those kept (their
        evidence has them) by the cap."""
        scores = self._scores[deprecation]
        entry = _Judged()
        for identity, density, _ in candidates:
            score = scores.get(identity)
            if score is not None and density >= _NEGLIGIBLE:
                entry.add(identity, score, density)
        history = self._history.setdefault(deprecation, deque())
        if len(entry.scores) > 1:  # alone, its share is 1 whatever the standings
            history.append(entry)
            if len(history) > HISTORY:
                history.popleft()  # its shares stay in the evidence, as they are now
        if history:  # the standings changed: the history's shares too
            self._reestimate(deprecation, history)
        if len(entry.scores) < 2:
            return candidates
        now = dict(zip(entry.identities, entry.shares, strict=True))
        return sorted(
            (c._replace(share=now.get(c.identity, c.share)) for c in candidates), key=_by_share
        )

    def _reestimate(self, deprecation: str, history: deque[_Judged]) -> None:
        """The shares of the occurrences in the history, weighed by the standings (see the
        module's documentation); each identity's evidence follows."""
        count = self._counts.get(deprecation, 0)
        scores = self._scores[deprecation]
        others = {  # 1 / (N' + 2): the occurrences each could have caused, but this one
            identity: 1.0 / (self._considered(deprecation, count, identity, score) + 1.0)
            for identity, score in scores.items()
        }
        for _ in range(_PASSES):
            changed = 0.0
            for entry in history:
                shares = entry.shares
                weights = [
                    density * (max(0.0, score.evidence - share) + 1.0) * others[identity]
                    for identity, score, density, share in zip(
                        entry.identities, entry.scores, entry.densities, shares, strict=True
                    )
                ]
                total = sum(weights)
                for k, score in enumerate(entry.scores):
                    share = weights[k] / total
                    change = share - shares[k]
                    if change:
                        score.evidence += change
                        shares[k] = share
                        changed = max(changed, abs(change))
            if changed < _SETTLED:
                return

    def _considered(self, deprecation: str, count: int, identity: Identity, score: _Score) -> int:
        """The occurrences counted since ``identity`` was first seen (at least the ones it was a
        candidate for: a forgotten identity whose connections were still kept has no start)."""
        seen = self._identities.get(identity)
        since = count if seen is None else count - seen.base.get(deprecation, 0)
        return max(since, score.occurrences)

    def _advance(self, time_ns: int) -> None:
        self._latest_ns = max(self._latest_ns, time_ns)

    def _oldest_judged(self) -> int:
        oldest = self._latest_ns - self.settings.horizon_ns
        return oldest if self.since_ns is None else max(oldest, self.since_ns)

    def _prune(self) -> None:
        oldest = self._oldest_judged()
        settings = self.settings
        oldest_send = oldest - settings.activity_window_ns
        dormant_before = self._latest_ns - settings.max_open_ns
        for handle, kept in list(self._connections.items()):
            if self._end(kept) < oldest:
                del self._connections[handle]
                continue
            sends = kept.sends
            if sends:
                while sends[0] < oldest_send and len(sends) > 1:  # the latest marks "has sent"
                    sends.popleft()
            elif (
                self._sends_seen
                and settings.closes_tracked
                and kept.close_ns is None
                and kept.connection.connect_ns < dormant_before
            ):
                del self._connections[handle]
                self._dormant[handle] = kept
        while len(self._dormant) > settings.max_dormant:
            del self._dormant[next(iter(self._dormant))]

    def _end(self, kept: _Open) -> float:
        """The last time the connection could be a candidate."""
        settings = self.settings
        if kept.close_ns is not None:
            return kept.close_ns + settings.slack_ns
        if settings.closes_tracked:
            return math.inf
        end = kept.connection.connect_ns + settings.window_ns
        if kept.sends:
            end = max(end, kept.sends[-1] + settings.activity_window_ns)
        return end

    def _cap(self, deprecation: str, keep: Identity) -> None:
        """At most ``max_identities`` scores: the one with the least evidence goes."""
        scores = self._scores[deprecation]
        if len(scores) > self.settings.max_identities:
            weakest = min((i for i in scores if i != keep), key=lambda i: scores[i].evidence)
            del scores[weakest]
            for entry in self._history.get(deprecation, ()):
                entry.forget(weakest)

    def _forget(self, identity: Identity) -> None:
        del self._identities[identity]
        for deprecation, scores in self._scores.items():
            if scores.pop(identity, None) is not None:
                for entry in self._history.get(deprecation, ()):
                    entry.forget(identity)


def _lifetime_density(since_connect: int, since_close: int, skew: int) -> float:
    """The density (1/s) of the call's recorded time, ``since_connect`` ns after the connect
    and ``since_close`` ns after the close: a moment of the lifetime, uniformly, plus Laplace
    skew of scale ``skew``: ``(G(since_connect) - G(since_close)) / lifetime``, ``G`` the
    skew's distribution function; for a lifetime much shorter than ``skew``, its density."""
    lifetime = since_connect - since_close
    if lifetime * 1000 < skew:
        middle = (since_connect + since_close) / 2
        return _NS * math.exp(-abs(middle) / skew) / (2 * skew)
    return _NS * (_laplace_cdf(since_connect, skew) - _laplace_cdf(since_close, skew)) / lifetime


def _laplace_cdf(x: float, scale: float) -> float:
    if x < 0:
        return 0.5 * math.exp(x / scale)
    return 1.0 - 0.5 * math.exp(-x / scale)


def _by_share(candidate: Candidate) -> tuple[float, tuple[str, str, str, str]]:
    return (-candidate.share, _key(candidate.identity))


def _identity_key(row: Attribution) -> tuple[str, str, str, str]:
    return _key(row.identity)


def _key(identity: Identity) -> tuple[str, str, str, str]:
    return (
        identity.pod_namespace or "",
        identity.pod_name or "",
        identity.container or "",
        identity.comm,
    )
