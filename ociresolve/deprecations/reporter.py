"""The deprecation reporter: polls containerd's warnings, writes a line per new occurrence and,
when the connect tracer feeds it the connections to the containerd socket, one line per client
that the occurrence is attributed to, with its confidence so far.

The lines (logfmt, or JSON objects with the same fields, on the reporter's stream)::

    msg="found CRI v1alpha2 API deprecation warning" node=... deprecation=... lastOccurrence=...
    msg="deprecated API client" node=... deprecation=... pod=<ns>/<pod> container=...
        workload=Deployment/checkout comm=... confidence=0.91 occurrences=10

Occurrences already there when polling starts are reported (``existing=true``) but not
attributed: the connections that caused them may predate the tracer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, TextIO

from ociresolve.deprecations.correlate import Attribution, Connection, Correlator
from ociresolve.deprecations.lines import Format, client_fields, occurrence_fields, render
from ociresolve.deprecations.poller import DEFAULT_INTERVAL, Occurrence, Poller, Source

log = logging.getLogger(__name__)

# A client line is written for each candidate with at least this share of an occurrence.
MIN_SHARE: Final = 0.05
# An occurrence is judged no sooner than this (s) after containerd recorded it: the tracer's
# reports of the sends just before it (polled every 5 ms) must have reached the correlator.
SETTLE: Final = 0.25


class Reporter:
    """``run(stop)`` polls ``source`` every ``interval`` seconds until ``stop`` is set.

    ``connected``, ``sent`` and ``closed`` may be called from any thread (the tracer's); without
    them, only occurrences are reported. ``clock`` gives the wall time of the lines, in ns.
    ``workloads`` names a client's workload (``Deployment/checkout``) from its container id,
    ``None`` when it cannot be known; it is called on the reporter's thread, outside the lock
    (it may ask CRI), and must not raise. An occurrence polled less than ``settle`` seconds
    after containerd recorded it waits for the rest (with a correlator): a poll can come right
    after the call, before the tracer's report of the request that made it.
    """

    def __init__(
        self,
        source: Source,
        *,
        node: str,
        stream: TextIO,
        interval: float = DEFAULT_INTERVAL,
        correlator: Correlator | None = None,
        clock: Callable[[], int] = time.time_ns,
        output: Format = "logfmt",
        workloads: Callable[[str | None], str | None] | None = None,
        settle: float = SETTLE,
    ) -> None:
        self.source = source
        self.node = node
        self.stream = stream
        self.interval = interval
        self.correlator = correlator
        self.clock = clock
        self.output = output
        self.workloads = workloads
        self.settle = settle
        self.occurrences = 0
        self._lock = threading.Lock()

    def connected(self, connection: Connection) -> int | None:
        """A connection to the containerd socket, as the tracer saw it; the handle is for
        ``closed`` (``None`` when nothing is correlated)."""
        if self.correlator is None:
            return None
        with self._lock:
            return self.correlator.connected(connection)

    def sent(self, handle: int, time_ns: int) -> None:
        """The connection ``handle`` sent a request (or part of one) at ``time_ns`` (ns since
        the epoch)."""
        if self.correlator is not None:
            with self._lock:
                self.correlator.sent(handle, time_ns)

    def closed(self, handle: int, close_ns: int) -> None:
        """The connection ``handle`` ended at ``close_ns`` (ns since the epoch)."""
        if self.correlator is not None:
            with self._lock:
                self.correlator.closed(handle, close_ns)

    def clients(self) -> list[Attribution]:
        """Every attributed client so far, most confident first."""
        if self.correlator is None:
            return []
        with self._lock:
            return self.correlator.attributions()

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def run(self, stop: threading.Event) -> None:
        for occurrence in Poller(self.source, interval=self.interval, stop=stop).run():
            wait = self._unsettled(occurrence)
            if wait > 0.0 and stop.wait(wait):
                return
            self.handle(occurrence)

    def _unsettled(self, occurrence: Occurrence) -> float:
        """How long (s, at most ``settle``) to wait before judging ``occurrence``."""
        recorded = occurrence.deprecation.last_occurrence_ns
        if self.correlator is None or occurrence.existing or recorded is None:
            return 0.0
        age = (self.clock() - recorded) / 1e9
        return min(self.settle, max(0.0, self.settle - age))

    def handle(self, occurrence: Occurrence) -> None:
        warning = occurrence.deprecation
        self.occurrences += 1
        now = self.clock()
        lines = [
            occurrence_fields(
                time_ns=now,
                node=self.node,
                deprecation=warning.id,
                last_occurrence_ns=warning.last_occurrence_ns,
                existing=occurrence.existing,
            )
        ]
        if (
            self.correlator is not None
            and not occurrence.existing
            and warning.last_occurrence_ns is not None
        ):
            with self._lock:
                evidence = self.correlator.occurred(warning.id, warning.last_occurrence_ns)
                standings = {a.identity: a for a in self.correlator.attributions(warning.id)}
            for candidate in evidence.candidates:
                standing = standings.get(candidate.identity)
                if candidate.share >= MIN_SHARE and standing is not None:
                    workload = self._workload(standing.container_id)
                    lines.append(
                        client_fields(standing, time_ns=now, node=self.node, workload=workload)
                    )
        self.stream.write("".join(render(line, self.output) + "\n" for line in lines))
        self.stream.flush()

    def _workload(self, container_id: str | None) -> str | None:
        if self.workloads is None or container_id is None:
            return None
        return self.workloads(container_id)
