"""Which clients cause a deprecation warning: containerd's occurrences matched with the
connections to its socket that the tracer saw.

containerd says only *when* a deprecated API was last called (``last_occurrence``, from the
host's CLOCK_REALTIME); the tracer says who connected to the socket, and when (the same clock).
This module is the matching, with no I/O and no clock of its own: every time is passed in, in ns
since the epoch. Feed it connections as the tracer sees them (``connected``, and ``closed`` when
a close is known) and each new occurrence once (``occurred``; the poller dedups them); read the
ranked attributions (``attributions``).

Candidates. A connection is a candidate for an occurrence at ``t`` when it can have carried the
call:

- its lifetime is known (closed, or ``closes_tracked`` and still open): ``connect - slack <= t
  <= close + slack`` (open: no upper bound);
- its close is unknown: ``connect - slack <= t <= connect + window``.

``slack`` (default 50 ms) absorbs the skew between containerd's timestamps and the tracer's
(both CLOCK_REALTIME of the same host, so it is small); ``window`` (default 2 s) is how long
after connecting a client with an unknown close may still make the call.

Share of one occurrence. Each occurrence is one unit of evidence, split among its candidates in
proportion to how well each explains ``t``: the density of "this connection made the call at
``t``" under a simple model, in 1/s:

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
  before ``t`` explains it ~2000 times worse than one 5 ms before. (A lone candidate gets the
  whole unit however far in its window it is: the kernel only ranks rivals.)

If exactly one of the candidates made the call, the posterior probability that it was ``c`` is
``f(c) / sum(f)``: that is ``c``'s share. An identity (pod namespace and name, container name and
comm; host processes have only a comm) gets the sum of its connections' shares. An occurrence
with no candidate is *unexplained*: its unit goes to nobody.

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
occurrence could still fall in their lifetime or window, and at most ``max_connections``
(oldest dropped first); identities at most ``max_identities`` (the least recently connected
dropped first, with their scores).
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import msgspec

_NS: Final = 1_000_000_000


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

    def __post_init__(self) -> None:
        if min(self.window_ns, self.tau_ns, self.horizon_ns, self.skew_ns) <= 0:
            raise ValueError("window, tau, horizon and skew must be positive")
        if self.slack_ns < 0:
            raise ValueError("slack must not be negative")
        if self.prior <= 0 or min(self.max_connections, self.max_identities) < 1:
            raise ValueError("prior and the caps must be positive")


class Candidate(NamedTuple):
    """An identity's share of one occurrence, from ``connections`` of its connections."""

    identity: Identity
    share: float
    connections: int


class Evidence(NamedTuple):
    """What one occurrence said: its candidates, largest share first (none: unexplained);
    ``late`` when it came too late to be judged (then it was not counted)."""

    deprecation: str
    time_ns: int
    candidates: tuple[Candidate, ...]
    late: bool = False


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
    """A kept connection; its close may become known later."""

    __slots__ = ("close_ns", "connection")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.close_ns = connection.close_ns


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


class Correlator:
    """The matching engine. Not thread-safe: one owner feeds it.

    ``since_ns``: when connections started to be fed (occurrences before it are late).
    """

    def __init__(self, settings: Settings | None = None, *, since_ns: int | None = None) -> None:
        self.settings = settings or Settings()
        self.since_ns = since_ns
        self._connections: dict[int, _Open] = {}
        self._next_handle = 0
        self._latest_ns = since_ns if since_ns is not None else -(2**63)
        self._identities: dict[Identity, _Seen] = {}
        self._scores: dict[str, dict[Identity, _Score]] = {}
        self._counts: dict[str, int] = {}
        self._unexplained: dict[str, int] = {}
        self._late: dict[str, int] = {}
        tau = self.settings.tau_ns / _NS
        self._exp_norm = 1.0 / (tau * -math.expm1(-self.settings.window_ns / self.settings.tau_ns))

    # -- feeding -------------------------------------------------------------------------------

    def connected(self, connection: Connection) -> int:
        """Record a connection; the handle is for ``closed``."""
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

    def closed(self, handle: int, close_ns: int) -> None:
        """The connection ``handle`` was closed at ``close_ns`` (ignored once it is forgotten)."""
        kept = self._connections.get(handle)
        if kept is not None:
            kept.close_ns = close_ns
        self._advance(close_ns)

    def occurred(self, deprecation: str, time_ns: int) -> Evidence:
        """A new occurrence of ``deprecation`` at ``time_ns``: its evidence, now counted."""
        self._advance(time_ns)
        self._prune()
        if time_ns < self._oldest_judged():
            self._late[deprecation] = self._late.get(deprecation, 0) + 1
            return Evidence(deprecation, time_ns, (), late=True)
        self._counts[deprecation] = self._counts.get(deprecation, 0) + 1
        weights: dict[Identity, float] = {}
        counts: dict[Identity, int] = {}
        latest: dict[Identity, Connection] = {}
        for kept in self._connections.values():
            weight = self._density(kept, time_ns)
            if weight <= 0.0:
                continue
            identity = kept.connection.identity
            weights[identity] = weights.get(identity, 0.0) + weight
            counts[identity] = counts.get(identity, 0) + 1
            if identity not in latest or kept.connection.connect_ns >= latest[identity].connect_ns:
                latest[identity] = kept.connection
        scores = self._scores.setdefault(deprecation, {})
        total = sum(weights.values())
        if total <= 0.0:
            self._unexplained[deprecation] = self._unexplained.get(deprecation, 0) + 1
            return Evidence(deprecation, time_ns, ())
        candidates = sorted(
            (Candidate(i, weight / total, counts[i]) for i, weight in weights.items()),
            key=_by_share,
        )
        for candidate in candidates:
            identity = candidate.identity
            score = scores.get(identity)
            if score is None:
                score = scores[identity] = _Score()
                self._cap(scores, identity)
            score.evidence += candidate.share
            score.occurrences += 1
            score.last_seen_ns = max(score.last_seen_ns, time_ns)
            score.container_id = latest[identity].container_id
            score.pid = latest[identity].pid
        return Evidence(deprecation, time_ns, tuple(candidates))

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
        """The connections kept."""
        return len(self._connections)

    @property
    def identities(self) -> int:
        """The identities kept."""
        return len(self._identities)

    # -- internals -----------------------------------------------------------------------------

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
        for handle in [h for h, kept in self._connections.items() if self._end(kept) < oldest]:
            del self._connections[handle]

    def _end(self, kept: _Open) -> float:
        """The last time the connection could be a candidate."""
        settings = self.settings
        if kept.close_ns is not None:
            return kept.close_ns + settings.slack_ns
        if settings.closes_tracked:
            return math.inf
        return kept.connection.connect_ns + settings.window_ns

    def _cap(self, scores: dict[Identity, _Score], keep: Identity) -> None:
        """At most ``max_identities`` scores: the one with the least evidence goes."""
        if len(scores) > self.settings.max_identities:
            weakest = min((i for i in scores if i != keep), key=lambda i: scores[i].evidence)
            del scores[weakest]

    def _forget(self, identity: Identity) -> None:
        del self._identities[identity]
        for scores in self._scores.values():
            scores.pop(identity, None)


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
